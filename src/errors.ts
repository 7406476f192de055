// The error a caller's bad input raises anywhere in the core (a generation option, a prompt that does
// not match its images, pixel values of the wrong shape, an unreadable image): its message names the
// input, and `param` says which one, so that a server can answer it with a 400 without checking the
// same things again. A leaf module.

export class InputError extends Error {
  constructor(
    /** The input at fault: `maxNewTokens`, `numPatchesList`, `pixelValues`, `stop`, ... */
    readonly param: string,
    message: string,
  ) {
    super(message);
    this.name = 'InputError';
  }
}
