#!/usr/bin/env node
require('../src/cli/launch')('converter/cli');
