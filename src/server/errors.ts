// Errors the server answers with, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** OpenAI's error type for the status. */
  get type(): string {
    if (this.status === 401) return 'authentication_error';
    if (this.status === 404) return 'not_found_error';
    if (this.status === 429) return 'rate_limit_error';
    if (this.status >= 500) return this.status === 503 ? 'service_unavailable_error' : 'server_error';
    return 'invalid_request_error';
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400 naming the request field at fault. */
export function badRequest(param: string | null, message: string, code: string | null = null): ApiError {
  return new ApiError(400, param === null ? message : `${param}: ${message}`, param, code);
}
