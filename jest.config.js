// src/backend.ts sets these for libtensorflow before it loads; inside Jest's sandbox process.env is a
// copy that native code never sees, so the tests' tensorflow backend gets them here (tests run in band).
process.env.TF_ENABLE_ONEDNN_OPTS ??= '0';
process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
process.env.TF_CPU_ALLOCATOR_USE_BFC ??= 'true';
// Likewise for Dawn (src/webgpu.ts): its OpenGL ES adapter on Linux needs EGL's headless platform.
if (process.platform === 'linux') process.env.EGL_PLATFORM ??= 'surfaceless';

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
