// What one request may ask of the server. Every input from a client is bounded by one of these.

export interface ServerLimits {
  /** Most bytes of a request body (413 above). */
  maxBodyBytes: number;
  /**
   * Most bytes of request bodies held at once, summed over requests being received, waiting or running
   * (429 above, before the rest of the body is read): many large bodies cannot take the memory.
   */
  maxBodyBytesHeld: number;
  /** Most decoded bytes of one image or video (a data URL's payload or a local file). */
  maxMediaBytes: number;
  /** Most pixels of an image (width x height, read from its header before decoding). */
  maxImagePixels: number;
  /** Most pixels of a video frame (width x height as ffprobe reports them). */
  maxFramePixels: number;
  /**
   * Most pixels decoded from one video: frames up to the last one sampled x the frame size (ffmpeg
   * decodes every frame before the last it keeps). Checked from ffprobe's numbers before decoding.
   */
  maxDecodePixels: number;
  /** Most characters of text in one request (all messages): bounds the tokenizer's work before the context check. */
  maxTextChars: number;
  /** Most messages in one request. */
  maxMessages: number;
  /** Most nesting of arrays and objects in a request body (checked before it is parsed). */
  maxJsonDepth: number;
  /** Most images or videos in one request. */
  maxMediaParts: number;
  /** Most tiles per image (a part's max_num; the model's max_dynamic_patch is the default). */
  maxTilesPerImage: number;
  /** Most frames sampled from a video (a part's num_frames). */
  maxFrames: number;
  /** Frames sampled from a video when the part does not say (upstream's load_video default). */
  defaultFrames: number;
  /** Most new tokens (max_tokens / max_completion_tokens). */
  maxTokens: number;
  /** New tokens when the request does not say. */
  defaultMaxTokens: number;
  /** Requests waiting for a slot behind the maxBatch admitted (429 above). */
  maxQueue: number;
  /**
   * Requests admitted at once: their generations decode together (continuous batching); media and
   * the vision encoder still run one request at a time. A beam search runs alone.
   */
  maxBatch: number;
  /** Bytes of visual tokens the vision-feature cache keeps (0: none). */
  featureCacheBytes: number;
  /** Milliseconds a client has to send a request's headers (Node's server.headersTimeout; 408 and the connection closed after). */
  headersTimeoutMs: number;
  /** Milliseconds a client has to send a whole request, headers and body (Node's server.requestTimeout). */
  requestTimeoutMs: number;
  /** Milliseconds a body may pause between two of its chunks before the request is cut off (408). */
  bodyIdleTimeoutMs: number;
  /** Milliseconds an idle keep-alive connection stays open between requests (Node's server.keepAliveTimeout). */
  keepAliveTimeoutMs: number;
  /** Seconds a 429 (and a 503 while the model loads) tells the client to wait (Retry-After). */
  retryAfterSeconds: number;
  /**
   * Live video sessions held at once (429 above). Each holds the LLM's KV cache of its frames' prompt,
   * up to --max-model-len positions (README, "Live video": what a position costs).
   */
  maxLiveSessions: number;
  /** Most frames one live session takes (its max_frames; the context may stop it sooner). */
  maxLiveFrames: number;
  /** Milliseconds a live session is kept without a request before it is freed. */
  liveSessionIdleMs: number;
  /**
   * Positions of --max-model-len a live session's frames leave free for a question and its answer: a
   * frame that would leave fewer is refused (context_length_exceeded), so a full session still answers.
   */
  liveAnswerPositions: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxBodyBytes: 64 * 1024 * 1024,
  maxBodyBytesHeld: 256 * 1024 * 1024,
  maxMediaBytes: 32 * 1024 * 1024,
  maxImagePixels: 6000 * 6000,
  maxFramePixels: 3840 * 2160,
  maxDecodePixels: 2 ** 34,
  maxTextChars: 256 * 1024,
  maxMessages: 1024,
  maxJsonDepth: 32,
  maxMediaParts: 16,
  maxTilesPerImage: 40,
  maxFrames: 128,
  defaultFrames: 32,
  maxTokens: 8192,
  defaultMaxTokens: 512,
  maxQueue: 16,
  maxBatch: 8,
  featureCacheBytes: 256 * 1024 * 1024,
  headersTimeoutMs: 30_000,
  requestTimeoutMs: 300_000,
  bodyIdleTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  retryAfterSeconds: 1,
  maxLiveSessions: 4,
  maxLiveFrames: 256,
  liveSessionIdleMs: 300_000,
  liveAnswerPositions: 64,
};
