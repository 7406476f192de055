#!/usr/bin/env node
require('./launch')('src/cli/main');
