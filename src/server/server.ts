// `pvc serve`: an OpenAI-compatible HTTP server (GET /v1/models, POST /v1/chat/completions, GET /health,
// GET /metrics) on Node's own http module, with the model in this thread: generation gives the event
// loop a turn after every layer, so requests keep being answered while it runs. Up to limits.maxBatch
// requests are admitted at once (GenerationQueue) and decode together (ContinuousBatcher); their media
// and vision run one request at a time, or come from the feature cache (features.ts). Each request has
// an AbortController that the client's disconnect fires, so a client that leaves stops its generation
// within a step and frees its slot. Stateless per request (the feature cache aside, which changes no
// answer): replicas scale out behind any HTTP load balancer.
import { createHash, randomUUID, timingSafeEqual } from 'crypto';
import * as fs from 'fs';
import * as http from 'http';
import { AddressInfo } from 'net';
import * as tf from '@tensorflow/tfjs';
import { chatInputs } from '../chat/inputs';
import { contextLength } from '../config';
import { InputError } from '../errors';
import { AbortError, runYielding, throwIfAborted, yieldToEventLoop } from '../event_loop';
import { ContinuousBatcher } from '../generation/batch';
import { GenerationConfig } from '../generation/config';
import { DataFlag, samplesOf } from '../model/samples';
import { LoadedImage } from '../preprocess/image';
import { LoadedVideo } from '../preprocess/video';
import { PVCModel } from '../pvc_model';
import { ApiError, badRequest } from './errors';
import { CachedFeatures, FeatureCache, featureKey } from './features';
import { DEFAULT_LIMITS, ServerLimits } from './limits';
import { closeMedia, decodeImagePart, decodeVideoPart, tilesOf } from './media';
import { checkFrameType, LiveSessions } from './live';
import { ServerMetrics } from './metrics';
import { GenerationQueue } from './queue';
import { ChatRequest, parseChatRequest } from './request';

export interface ServeOptions {
  /** The model, or its loading (requests are answered 503 until it is done). */
  model: PVCModel | Promise<PVCModel>;
  /** The name clients pass as `model` (default: "pvc"). */
  modelName?: string;
  /** Default 127.0.0.1: only this machine can connect unless told otherwise. */
  host?: string;
  /** Default 8000; 0 picks a free port. */
  port?: number;
  /** When set, every /v1 request needs `Authorization: Bearer KEY`. */
  apiKey?: string;
  /** The one directory whose files requests may name (file paths, file:// URLs); none by default. */
  allowedLocalMediaPath?: string;
  limits?: Partial<ServerLimits>;
  /**
   * Prompt tokens plus max_tokens a request may ask for; default max_position_embeddings x the
   * rope_scaling factor (vLLM's rule). The model itself has no such limit (see RunLimits.maxContext).
   */
  maxModelLen?: number;
  /**
   * The images of a request are one video's frames unless it says otherwise (its `images_as_video`):
   * for the evaluation harnesses, which send a video as image_url frames (PVC's video path then runs).
   */
  imagesAsVideo?: boolean;
  /** One line per request (method, path, status, milliseconds); default: none. */
  log?: (line: string) => void;
}

/** A request's media for the prompt: tiles per image or frame, PVC's data flag, and their visual tokens (the request's to free). */
interface VisualInput {
  numPatchesList: number[];
  dataFlag?: DataFlag;
  visualTokens?: tf.Tensor2D;
}

/** Bodies at least this large are parsed in turns of the event loop, one at a time (readJson). */
const LARGE_BODY_BYTES = 1 << 20;

export class ChatServer {
  readonly modelName: string;
  readonly limits: ServerLimits;
  /** Admission: limits.maxBatch requests at once, limits.maxQueue waiting. */
  readonly queue: GenerationQueue;
  /** Media decoding and the vision encoder: one request at a time (their memory is per request). */
  private readonly encoding = new GenerationQueue(Number.MAX_SAFE_INTEGER, 1);
  /** Large request bodies are parsed one at a time (see readJson). */
  private readonly parsing = new GenerationQueue(Number.MAX_SAFE_INTEGER, 1);
  readonly sessions: LiveSessions;
  readonly features: FeatureCache;
  readonly metrics: ServerMetrics;
  /** The continuous batch (created with the model). */
  private batcher: ContinuousBatcher | undefined;
  private model: PVCModel | null = null;
  private loadError: Error | null = null;
  private readonly mediaRoot: string | null;
  private readonly keyDigest: Buffer | null;
  private readonly active = new Set<AbortController>();
  private readonly server: http.Server;
  private closing = false;
  /** Bytes of the bodies of requests not yet answered (limits.maxBodyBytesHeld). */
  private bodyBytesHeld = 0;

  private constructor(private readonly options: ServeOptions) {
    this.modelName = options.modelName ?? 'pvc';
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.queue = new GenerationQueue(this.limits.maxQueue, this.limits.maxBatch);
    this.features = new FeatureCache(this.limits.featureCacheBytes);
    this.metrics = new ServerMetrics(this.queue, this.features, () => this.batching.decoding + this.batching.prefilling);
    this.sessions = new LiveSessions(this.limits, this.queue, (model) => this.maxModelLen(model));
    this.mediaRoot = options.allowedLocalMediaPath === undefined ? null : fs.realpathSync(options.allowedLocalMediaPath);
    if (this.mediaRoot !== null && !fs.statSync(this.mediaRoot).isDirectory())
      throw new Error(`--allowed-local-media-path ${options.allowedLocalMediaPath}: not a directory`);
    this.keyDigest = options.apiKey === undefined ? null : digest(options.apiKey);
    const { headersTimeoutMs, requestTimeoutMs, keepAliveTimeoutMs } = this.limits;
    this.server = http.createServer(
      {
        headersTimeout: Math.min(headersTimeoutMs, requestTimeoutMs), // Node refuses a longer one
        requestTimeout: requestTimeoutMs,
        keepAliveTimeout: keepAliveTimeoutMs,
        // How often Node checks the first two (its default, 30 s, would let a short limit run long).
        connectionsCheckingInterval: Math.max(10, Math.min(1000, headersTimeoutMs / 4, requestTimeoutMs / 4)),
      },
      (req, res) => void this.handle(req, res),
    );
    Promise.resolve(options.model).then(
      (model) => {
        this.model = model;
        this.batcher = model.createBatcher();
      },
      (e: Error) => {
        this.loadError = e;
        options.log?.(`error: the model failed to load: ${e?.stack ?? e}`);
      },
    );
  }

  /** Rows in the continuous batch now (in decode, and waiting for or in their prefill). */
  get batching(): { decoding: number; prefilling: number } {
    return this.batcher?.size ?? { decoding: 0, prefilling: 0 };
  }

  /** Starts listening (host default 127.0.0.1, port default 8000). */
  static async start(options: ServeOptions): Promise<ChatServer> {
    const server = new ChatServer(options);
    await new Promise<void>((resolve, reject) => {
      server.server.once('error', reject);
      server.server.listen(options.port ?? 8000, options.host ?? '127.0.0.1', () => {
        server.server.off('error', reject);
        resolve();
      });
    });
    return server;
  }

  get address(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  /** http://host:port */
  get url(): string {
    const { address, family, port } = this.address;
    return `http://${family === 'IPv6' ? `[${address}]` : address}:${port}`;
  }

  /** Stops listening, aborts running and waiting requests, closes connections. The model stays the caller's. */
  async close(): Promise<void> {
    this.closing = true;
    this.queue.rejectWaiting(new ApiError(503, 'the server is shutting down', null, 'shutting_down'));
    for (const controller of this.active) controller.abort(new Error('the server is shutting down'));
    this.sessions.close();
    this.features.clear();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    // Give aborted responses a moment to end, then drop what is left.
    setTimeout(() => this.server.closeAllConnections(), 1000).unref();
    await closed;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = Date.now();
    const controller = new AbortController();
    this.active.add(controller);
    // Bytes of this request's body counted in bodyBytesHeld until the response ends.
    let held = 0;
    const hold = (n: number) => {
      if (this.bodyBytesHeld + n > this.limits.maxBodyBytesHeld) {
        throw new ApiError(
          429,
          `the server holds too many request bodies (${this.limits.maxBodyBytesHeld} bytes at most); retry shortly`,
          null,
          'too_many_bodies',
        );
      }
      this.bodyBytesHeld += n;
      held += n;
    };
    // 'close' before the response is finished: the client left (or the connection broke).
    res.on('close', () => {
      this.bodyBytesHeld -= held;
      held = 0;
      this.active.delete(controller);
      if (!res.writableFinished) controller.abort(new Error('the client disconnected'));
      this.options.log?.(`${req.method} ${req.url} ${res.writableFinished ? res.statusCode : 'disconnected'} ${Date.now() - started} ms`);
    });
    res.on('error', () => {}); // writes after a disconnect
    try {
      await this.route(req, res, controller.signal, hold, started);
    } catch (e) {
      this.fail(res, e);
    }
  }

  private async route(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    signal: AbortSignal,
    hold: (bytes: number) => void,
    received: number,
  ): Promise<void> {
    const pathname = new URL(req.url ?? '/', 'http://localhost').pathname.replace(/\/+$/, '');
    // /v1/models/{id}: one model (the openai clients' models.retrieve()); /v1/live/sessions/{id}[/...]: a live session.
    const modelId = /^\/v1\/models\/(.+)$/.exec(pathname)?.[1];
    const live = /^\/v1\/live\/sessions\/([^/]+)(\/frames|\/chat\/completions)?$/.exec(pathname);
    const path = modelId !== undefined ? '/v1/models/{id}' : live ? `/v1/live/sessions/{id}${live[2] ?? ''}` : pathname;
    const routes: Record<string, string[]> = {
      '/health': ['GET'],
      '/metrics': ['GET'],
      '/v1/models': ['GET'],
      '/v1/models/{id}': ['GET'],
      '/v1/chat/completions': ['POST'],
      '/v1/live/sessions': ['POST'],
      '/v1/live/sessions/{id}': ['GET', 'DELETE'],
      '/v1/live/sessions/{id}/frames': ['POST'],
      '/v1/live/sessions/{id}/chat/completions': ['POST'],
    };
    if (routes[path] === undefined)
      throw new ApiError(404, `no route ${pathname.slice(0, 100)} (routes: ${Object.keys(routes).join(', ')})`, null, 'not_found');
    if (!routes[path].includes(req.method ?? '')) {
      res.setHeader('allow', routes[path].join(', '));
      throw new ApiError(405, `${path} takes ${routes[path].join(' or ')}, not ${req.method}`, null, 'method_not_allowed');
    }
    if (path === '/health') {
      // Unauthenticated, for load balancers: 200 once the model is loaded.
      const status = this.model ? 'ok' : this.loadError ? 'failed' : 'loading';
      return sendJson(res, this.model ? 200 : 503, { status, queue: this.queue.depth, live_sessions: this.sessions.count });
    }
    if (path === '/metrics') {
      // Unauthenticated as /health (vLLM's rule): counts and timings, nothing of any request's content.
      const text = await this.metrics.registry.metrics();
      res.writeHead(200, { 'content-type': this.metrics.registry.contentType, 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    this.authorize(req);
    const model = this.ready();
    if (live) return this.routeLive(model, req, res, live[1], live[2], signal, hold, received);
    if (path === '/v1/live/sessions') return sendJson(res, 200, this.sessions.create(model, await this.readJson(req, hold, signal)));
    const card = { id: this.modelName, object: 'model', created: 0, owned_by: 'pvc-tfjs', max_model_len: this.maxModelLen(model) };
    if (path === '/v1/models') return sendJson(res, 200, { object: 'list', data: [card] });
    if (modelId !== undefined) {
      let id: string;
      try {
        id = decodeURIComponent(modelId);
      } catch {
        id = modelId;
      }
      if (id !== this.modelName)
        throw new ApiError(404, `the model '${id.slice(0, 100)}' does not exist (this server serves '${this.modelName}')`, 'model', 'model_not_found');
      return sendJson(res, 200, card);
    }
    const body = await this.readJson(req, hold, signal);
    const request = await parseChatRequest(body, this.mediaRoot, this.limits, model.config.max_dynamic_patch, this.options.imagesAsVideo);
    try {
      // Resolved once, here: a bad option is a 400 before the request waits or decodes anything.
      const generation = model.generationConfig(request.generation);
      this.checkVisualTokens(model, request);
      await this.complete(model, request, generation, res, signal, received);
    } finally {
      await closeMedia(request.media);
    }
  }

  /**
   * The body as JSON (its depth checked before it is parsed); a `model` it names must be this server's.
   * An empty body is undefined. A large body is joined, decoded and parsed in turns of the event loop,
   * one such body at a time: 40 MB take ~80 ms a step, and six ending together held /health 1.5 s.
   */
  private async readJson(req: http.IncomingMessage, hold: (bytes: number) => void, signal: AbortSignal): Promise<unknown> {
    const chunks = await readBody(req, this.limits.maxBodyBytes, this.limits.bodyIdleTimeoutMs, hold);
    const size = chunks.reduce((n, c) => n + c.length, 0);
    if (size === 0) return undefined;
    const large = size >= LARGE_BODY_BYTES;
    const release = large ? await this.parsing.acquire(signal) : () => {};
    const turn = () => (large ? yieldToEventLoop(signal) : undefined);
    let body: unknown;
    try {
      const raw = Buffer.concat(chunks, size);
      chunks.length = 0;
      await turn();
      if (jsonDepth(raw) > this.limits.maxJsonDepth)
        throw badRequest(null, `the body nests arrays and objects more than ${this.limits.maxJsonDepth} deep`, 'invalid_json');
      await turn();
      const text = raw.toString('utf8');
      await turn();
      try {
        body = JSON.parse(text);
      } catch (e) {
        throw badRequest(null, `the body is not valid JSON (${(e as Error).message})`, 'invalid_json');
      }
    } finally {
      release();
    }
    const name = (body as { model?: unknown } | null)?.model;
    if (typeof name === 'string' && name !== this.modelName)
      throw new ApiError(404, `the model '${name.slice(0, 100)}' does not exist (this server serves '${this.modelName}')`, 'model', 'model_not_found');
    return body;
  }

  /** A live session's routes (src/server/live.ts). */
  private async routeLive(
    model: PVCModel,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    id: string,
    sub: string | undefined,
    signal: AbortSignal,
    hold: (bytes: number) => void,
    received: number,
  ): Promise<void> {
    if (sub === undefined) return sendJson(res, 200, req.method === 'DELETE' ? this.sessions.delete(id) : this.sessions.get(id));
    if (sub === '/frames') {
      this.sessions.get(id); // 404 before the body is read
      checkFrameType(req);
      const bytes = Buffer.concat(await readBody(req, this.limits.maxMediaBytes, this.limits.bodyIdleTimeoutMs, hold));
      return sendJson(res, 200, await this.sessions.addFrame(model, id, bytes, signal));
    }
    // A question: a chat completion's body, one user message of text (the frames are the session's).
    const body = await this.readJson(req, hold, signal);
    const request = await parseChatRequest(body ?? {}, null, this.limits, model.config.max_dynamic_patch);
    if (request.media.length > 0 || request.history.length > 0 || request.systemMessage !== undefined || request.answerPrefix !== undefined) {
      await closeMedia(request.media);
      throw badRequest(
        'messages',
        "a live session's question is one user message of text (the frames are the session's; its system message is set when it is created)",
      );
    }
    if (model.generationConfig(request.generation).numBeams > 1) throw badRequest('n', 'a live session answers greedily or by sampling');
    const fields = body as Record<string, unknown> | undefined;
    const maxTokensGiven = fields?.max_tokens !== undefined || fields?.max_completion_tokens !== undefined;
    await this.sessions.ask(id, signal, async (live) => {
      const promptTokens = live.prompt(request.question).length;
      const limit = this.maxModelLen(model);
      // Without max_tokens, the answer may take what the context leaves, up to the default (as vLLM).
      const maxTokens = maxTokensGiven ? request.maxTokens : Math.min(request.maxTokens, limit - promptTokens);
      if (maxTokens < 1 || promptTokens + maxTokens > limit) {
        throw badRequest(
          'messages',
          `the session's prompt of ${promptTokens} tokens plus max_tokens ${maxTokens} exceeds the server's limit of ${limit} tokens (--max-model-len)`,
          'context_length_exceeded',
        );
      }
      const generation = model.generationConfig({ ...request.generation, maxNewTokens: maxTokens });
      await this.sendCompletion(
        res,
        { ...request, maxTokens },
        generation,
        promptTokens,
        {
          answer: async (options) => (await live.ask(request.question, generation, options)).answer,
          stream: (options) => live.stream(request.question, generation, options),
        },
        signal,
        received,
      );
    });
  }

  private authorize(req: http.IncomingMessage): void {
    if (this.keyDigest === null) return;
    const header = req.headers.authorization ?? '';
    const token = /^Bearer\s+(.+)$/i.exec(header)?.[1] ?? '';
    // Digests of equal length, compared in constant time: neither the key nor its length leaks by timing.
    if (!timingSafeEqual(digest(token), this.keyDigest))
      throw new ApiError(401, 'invalid or missing API key (Authorization: Bearer KEY)', null, 'invalid_api_key');
  }

  /** The media's visual tokens alone (from headers and the request) against the context, before the request waits or decodes. */
  private checkVisualTokens(model: PVCModel, request: ChatRequest): void {
    const { media } = request;
    const dataFlag = media.some((m) => m.kind === 'video') || request.imagesAsVideo ? 3 : media.length > 1 ? 2 : 1;
    const visual = media.reduce((n, m) => n + tilesOf(m, model.config.image_size), 0) * model.tokensPerTile(dataFlag);
    if (visual + request.maxTokens > this.maxModelLen(model)) {
      throw badRequest(
        'messages',
        `the media's ${visual} visual tokens plus max_tokens ${request.maxTokens} exceed the server's limit of ${this.maxModelLen(model)} tokens (--max-model-len)`,
        'context_length_exceeded',
      );
    }
  }

  private maxModelLen(model: PVCModel): number {
    return this.options.maxModelLen ?? contextLength(model.config.llm);
  }

  private ready(): PVCModel {
    if (this.closing) throw new ApiError(503, 'the server is shutting down', null, 'shutting_down');
    if (this.loadError) throw new ApiError(503, 'the model failed to load (the server log says why)', null, 'model_load_failed');
    if (!this.model) throw new ApiError(503, 'the model is still loading; retry shortly', null, 'model_loading');
    return this.model;
  }

  /**
   * Waits for a slot (every slot for a beam search), gets the media's visual tokens (the feature cache,
   * or decoding and the vision encoder, one request at a time), then generates in the continuous
   * batch and answers (JSON or server-sent events).
   */
  private async complete(
    model: PVCModel,
    request: ChatRequest,
    generation: GenerationConfig,
    res: http.ServerResponse,
    signal: AbortSignal,
    received: number,
  ): Promise<void> {
    const waited = performance.now();
    const release = await this.queue.acquire(signal, generation.numBeams > 1);
    this.metrics.queueTime.observe((performance.now() - waited) / 1000);
    let visual: VisualInput | null = null;
    try {
      visual = await this.visualInput(model, request, signal);
      // Message text is text: only the template places special tokens (a client cannot forge a turn).
      const { history, systemMessage, answerPrefix } = request;
      const promptOptions = { history, systemMessage, answerPrefix, plainText: true, ...visual };
      const turn = model.prepareChat(null, request.question, { ...promptOptions, generation });
      const promptTokens = turn.inputIds.length;
      if (promptTokens + request.maxTokens > this.maxModelLen(model)) {
        throw badRequest(
          'messages',
          `the prompt's ${promptTokens} tokens (visual tokens included) plus max_tokens ${request.maxTokens} exceed the server's limit of ${this.maxModelLen(model)} tokens (--max-model-len)`,
          'context_length_exceeded',
        );
      }
      // Each request is answered as on a freshly loaded model: no rotary state from earlier requests
      // (the batch gives each row its own; a beam search, alone, resets the model's).
      const run = { resetRotary: true, batcher: this.batcher };
      await this.sendCompletion(
        res,
        request,
        generation,
        promptTokens,
        {
          answer: async (options) => (await model.answer(turn, { ...options, ...run })).answer,
          stream: (options) => model.streamAnswer(turn, { ...options, ...run }),
        },
        signal,
        received,
      );
    } finally {
      visual?.visualTokens?.dispose();
      release();
    }
  }

  /**
   * The visual tokens of a request's media, in prompt order, with its numPatchesList and data flag.
   * All parts in the feature cache: from there, nothing decoded. Otherwise every part is decoded and
   * encoded together (one request at a time: `encoding`), as model.chat would, and each part's
   * tokens are cached.
   */
  private async visualInput(model: PVCModel, request: ChatRequest, signal: AbortSignal): Promise<VisualInput> {
    const { media } = request;
    if (media.length === 0) return { numPatchesList: [] };
    const video = media[0].kind === 'video' || request.imagesAsVideo;
    const dataFlag: DataFlag = video ? 3 : media.length > 1 ? 2 : 1;
    const inputSize = model.config.image_size;
    // Cached per part: an image, or a video (its frames attend to each other: one entry for them all).
    const partKeys = await Promise.all(media.map((m) => featureKey(m, inputSize, dataFlag)));
    const keys = video ? [partKeys.join('+')] : partKeys;
    const hits = keys.map((k) => this.features.get(k));
    this.metrics.featureCacheHits.inc(hits.filter(Boolean).length);
    this.metrics.featureCacheMisses.inc(hits.filter((h) => !h).length);
    if (hits.every((h) => h !== undefined)) {
      const cached = hits as CachedFeatures[];
      return { numPatchesList: cached.flatMap((h) => h.tiles), dataFlag, visualTokens: tf.concat(cached.map((h) => h.tokens)) as tf.Tensor2D };
    }
    const release = await this.encoding.acquire(signal);
    const loaded: (LoadedImage | LoadedVideo)[] = [];
    let pixelValues: tf.Tensor4D | null = null;
    try {
      for (const m of media) {
        throwIfAborted(signal);
        if (m.kind === 'image') loaded.push(await decodeImagePart(m.bytes!, { inputSize, maxNum: m.maxNum!, maxPixels: this.limits.maxImagePixels }, m.param));
        else
          loaded.push(
            await decodeVideoPart(
              m,
              { inputSize, numFrames: m.numFrames!, maxFramePixels: this.limits.maxFramePixels, maxDecodePixels: this.limits.maxDecodePixels },
              signal,
            ),
          );
      }
      throwIfAborted(signal);
      // Images as a video's frames: one tile each (max_num 1), the data flag a video's.
      const inputs = chatInputs(media[0].kind === 'video' ? { video: loaded[0] as LoadedVideo } : { images: loaded as LoadedImage[] });
      pixelValues = inputs.pixelValues;
      const numPatchesList = inputs.numPatchesList!;
      const visualTokens = await runYielding(model.visualTokenSteps(pixelValues!, samplesOf(numPatchesList, dataFlag)), signal);
      // Each part's rows: its tiles (a video: its frames) x the tokens of a tile.
      const perPart = video ? [numPatchesList] : numPatchesList.map((n) => [n]);
      const rows = perPart.map((tiles) => tiles.reduce((a, b) => a + b, 0) * model.tokensPerTile(dataFlag));
      const parts = tf.split(visualTokens, rows) as tf.Tensor2D[];
      parts.forEach((part, i) => this.features.put(keys[i], part, perPart[i]));
      tf.dispose(parts);
      return { numPatchesList, dataFlag, visualTokens };
    } finally {
      // chatInputs joins the parts' pixel values into one tensor (and frees them), unless there is one part.
      if (pixelValues) pixelValues.dispose();
      else loaded.forEach((m) => m.pixelValues.dispose());
      release();
    }
  }

  /**
   * Answers a chat completion: `run.answer`'s text as one JSON object, or (request.stream) `run.stream`'s
   * pieces as server-sent events, in OpenAI's shapes, with the usage.
   */
  async sendCompletion(
    res: http.ServerResponse,
    request: Pick<ChatRequest, 'stream' | 'includeUsage' | 'maxTokens'>,
    generation: GenerationConfig,
    promptTokens: number,
    run: {
      answer: (options: { signal: AbortSignal; onToken: (id: number) => void }) => Promise<string>;
      stream: (options: { signal: AbortSignal; onToken: (id: number) => void }) => AsyncGenerator<string>;
    },
    signal: AbortSignal,
    /** When the request came in (Date.now()), for the metrics' time to first token and latency. */
    received: number,
  ): Promise<void> {
    let completionTokens = 0;
    let last = -1;
    const onToken = (id: number) => {
      if (completionTokens++ === 0) this.metrics.timeToFirstToken.observe((Date.now() - received) / 1000);
      this.metrics.generationTokens.inc();
      last = id;
    };
    const options = { signal, onToken };
    // Counted once the answer has ended (sent whole, or its stream's last event written).
    const answered = () => {
      this.metrics.promptTokens.inc(promptTokens);
      this.metrics.requestSuccess.inc({ finished_reason: finishReason() });
      this.metrics.e2eLatency.observe((Date.now() - received) / 1000);
    };
    const finishReason = () => (!generation.eosTokenId.includes(last) && completionTokens >= request.maxTokens ? 'length' : 'stop');
    const usage = () => ({ prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens });
    const id = `chatcmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    if (!request.stream) {
      const answer = await run.answer(options);
      answered();
      return sendJson(res, 200, {
        id,
        object: 'chat.completion',
        created,
        model: this.modelName,
        choices: [{ index: 0, message: { role: 'assistant', content: answer }, logprobs: null, finish_reason: finishReason() }],
        usage: usage(),
      });
    }
    const chunk = (delta: Record<string, string>, finish: string | null) => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model: this.modelName,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      ...(request.includeUsage ? { usage: null } : {}),
    });
    const pieces = run.stream(options);
    try {
      // The first piece (or the end) before the headers: an error up to the first token is still a status code.
      let next = await pieces.next();
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' });
      sendEvent(res, chunk({ role: 'assistant', content: '' }, null));
      for (; !next.done; next = await pieces.next()) sendEvent(res, chunk({ content: next.value }, null));
    } finally {
      await pieces.return(undefined); // a throw between pieces still ends the generation (and frees its slot)
    }
    answered();
    sendEvent(res, chunk({}, finishReason()));
    if (request.includeUsage) sendEvent(res, { id, object: 'chat.completion.chunk', created, model: this.modelName, choices: [], usage: usage() });
    res.end('data: [DONE]\n\n');
  }

  /** Answers with the error in OpenAI's shape; nothing to answer when the client has gone. */
  private fail(res: http.ServerResponse, e: unknown): void {
    if (res.destroyed || res.writableEnded) return;
    const error =
      e instanceof ApiError
        ? e
        : e instanceof InputError
          ? badRequest(e.param, e.message, 'invalid_request')
          : e instanceof AbortError
            ? new ApiError(503, 'the request was aborted (server shutting down)', null, 'aborted')
            : new ApiError(500, 'internal error (the server log has its details)', null, 'internal_error');
    if (error.status >= 500 && !(e instanceof ApiError) && !(e instanceof AbortError)) this.options.log?.(`error: ${(e as Error)?.stack ?? e}`);
    if (res.headersSent) {
      // Mid-stream: the error as a last event (OpenAI's clients raise it), then the end.
      sendEvent(res, error.body());
      res.end('data: [DONE]\n\n');
      return;
    }
    if (error.status === 413 || error.status === 408) res.setHeader('connection', 'close');
    if (error.status === 429 || error.code === 'model_loading') res.setHeader('retry-after', String(this.limits.retryAfterSeconds));
    sendJson(res, error.status, error.body());
  }
}

/**
 * How deep arrays and objects nest in a JSON body (its UTF-8 bytes; strings skipped), without parsing
 * it. A string is skipped with memchr (Buffer.indexOf) to its closing quote: a 40 MB data URL costs
 * next to nothing.
 */
export function jsonDepth(bytes: Buffer): number {
  let depth = 0;
  let most = 0;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (c === 0x22) {
      // The closing quote: the next one preceded by an even number of backslashes.
      for (let escaped = true; escaped;) {
        i = bytes.indexOf(0x22, i + 1);
        if (i < 0) return most; // unterminated: JSON.parse will say so
        let backslashes = 0;
        while (bytes[i - 1 - backslashes] === 0x5c) backslashes++;
        escaped = backslashes % 2 === 1;
      }
    } else if (c === 0x5b || c === 0x7b) most = Math.max(most, ++depth);
    else if (c === 0x5d || c === 0x7d) depth--;
  }
  return most;
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendEvent(res: http.ServerResponse, body: unknown): void {
  res.write(`data: ${JSON.stringify(body)}\n\n`);
}

/**
 * The body's chunks, at most `limit` bytes (413 beyond, the rest read and dropped), each chunk first
 * counted by `hold` (which throws to refuse it); a pause of more than `idleMs` between chunks is a 408
 * (the whole request is bounded by the server's requestTimeout). Joined by the caller: several large
 * bodies ending at once would otherwise be copied in one turn of the event loop.
 */
function readBody(req: http.IncomingMessage, limit: number, idleMs: number, hold: (bytes: number) => void): Promise<Buffer[]> {
  const tooLarge = () => new ApiError(413, `the request body is larger than ${limit} bytes`, null, 'request_too_large');
  const refuse = (e: unknown) => {
    req.resume(); // the rest is read and dropped
    return Promise.reject(e);
  };
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) return refuse(tooLarge());
  try {
    hold(declared); // a declared length is counted at once, before any of it is read
  } catch (e) {
    return refuse(e);
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on('data', (chunk: Buffer) => {
      if (refused) return;
      size += chunk.length;
      try {
        if (size > limit) throw tooLarge();
        if (size > declared) hold(Math.min(chunk.length, size - declared));
        chunks.push(chunk);
      } catch (e) {
        refused = true;
        chunks.length = 0;
        reject(e);
      }
    });
    req.setTimeout(idleMs, () => reject(new ApiError(408, `the request body paused for more than ${idleMs} ms`, null, 'request_timeout')));
    req.on('end', () => {
      req.setTimeout(0); // the body is in: generation may take its time
      resolve(chunks);
    });
    req.on('error', reject);
    // A client gone before the end of its body: nothing to answer (the response's 'close' aborts the rest).
    req.on('close', () => !req.complete && reject(new AbortError(new Error('the client disconnected while sending'))));
  });
}
