/** @type {import('jest').Config} */
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // Parity suites run whole tiny models: give them room on a 2-core machine.
  testTimeout: 120000,
  // One worker keeps peak memory predictable; tfjs backends are per process anyway.
  maxWorkers: 1,
};
