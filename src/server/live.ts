// Live video sessions for `pvc serve` (model.liveVideo behind HTTP):
//   POST   /v1/live/sessions                         create one: {"max_frames"?, "system"?}
//   GET    /v1/live/sessions/{id}                    its state (frames, dropped, positions, expires_in)
//   DELETE /v1/live/sessions/{id}                    free it
//   POST   /v1/live/sessions/{id}/frames             one frame: the image's bytes as the body (image/jpeg, png, webp, gif)
//   POST   /v1/live/sessions/{id}/chat/completions   a question about the frames so far, as a chat completion
//                                                    (one user message of text; "stream": true for SSE), so an
//                                                    OpenAI client with baseURL .../v1/live/sessions/{id} asks it
// Each frame and each question takes the server's one generation slot in turn (GenerationQueue), as chat
// completions do. A frame posted while the session's last one is still being added waits in a slot of
// one: a newer frame takes the slot and the one it replaces is answered {"added": false} and counted in
// `dropped` (a client sending faster than the model learns it from every answer). Sessions are bounded
// in number, frames and context, and freed after an idle timeout.
import { randomUUID } from 'crypto';
import type * as http from 'http';
import { LiveVideo } from '../chat/live';
import { InputError } from '../errors';
import { throwIfAborted } from '../event_loop';
import type { PVCModel } from '../pvc_model';
import { ApiError, badRequest } from './errors';
import { ServerLimits } from './limits';
import { checkSignature, decodeImagePart } from './media';
import { GenerationQueue } from './queue';

interface Waiting {
  bytes: Buffer;
  signal: AbortSignal;
  done: (result: FrameResult) => void;
  fail: (e: unknown) => void;
}

export interface FrameResult {
  object: 'live.frame';
  /** False when a newer frame took this one's place before the model got to it. */
  added: boolean;
  frames: number;
  dropped: number;
  positions: number;
}

class Session {
  readonly created = Math.floor(Date.now() / 1000);
  dropped = 0;
  /** The frame waiting for the one being added (one at most). */
  waiting: Waiting | null = null;
  adding = false;
  /** Calls running or waiting (frames being added count once); the idle timer runs only at 0. */
  calls = 0;
  timer: NodeJS.Timeout | undefined;
  expiresAt = 0;
  /** Aborted when the session is freed: the wait for the generation slot on its frames' behalf ends. */
  readonly freed = new AbortController();

  constructor(
    readonly id: string,
    readonly live: LiveVideo,
  ) {}
}

export class LiveSessions {
  private readonly sessions = new Map<string, Session>();

  constructor(
    private readonly limits: ServerLimits,
    private readonly queue: GenerationQueue,
    private readonly maxModelLen: (model: PVCModel) => number,
  ) {}

  get count(): number {
    return this.sessions.size;
  }

  /** POST /v1/live/sessions */
  create(model: PVCModel, body: unknown): Record<string, unknown> {
    if (this.sessions.size >= this.limits.maxLiveSessions) {
      throw new ApiError(
        429,
        `the server holds its ${this.limits.maxLiveSessions} live sessions (--max-live-sessions); delete one or retry later`,
        null,
        'too_many_sessions',
      );
    }
    const o = body === undefined ? {} : body;
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw badRequest(null, 'the request body must be a JSON object');
    const fields = o as Record<string, unknown>;
    for (const k of Object.keys(fields))
      if (!['model', 'max_frames', 'system'].includes(k))
        throw badRequest(k.slice(0, 64), 'unknown field (accepted: model, max_frames, system)', 'unknown_field');
    const maxFrames = fields.max_frames ?? this.limits.maxLiveFrames;
    if (!(Number.isInteger(maxFrames) && (maxFrames as number) >= 1 && (maxFrames as number) <= this.limits.maxLiveFrames))
      throw badRequest('max_frames', `expected an integer from 1 to ${this.limits.maxLiveFrames}`);
    const system = fields.system;
    if (system !== undefined && (typeof system !== 'string' || system.length > this.limits.maxTextChars))
      throw badRequest('system', `expected a string of at most ${this.limits.maxTextChars} characters`);
    // Frames stop short of the context by liveAnswerPositions: room for questions and their answers.
    const maxPositions = Math.min(this.maxModelLen(model), model.config.llm.max_position_embeddings) - this.limits.liveAnswerPositions;
    if (maxPositions < 1)
      throw new ApiError(500, `--max-model-len leaves no room for frames after ${this.limits.liveAnswerPositions} positions for answers`, null, 'server_error');
    const live = model.liveVideo({ maxFrames: maxFrames as number, systemMessage: system as string | undefined, plainText: true, maxPositions });
    const session = new Session(`live-${randomUUID()}`, live);
    this.sessions.set(session.id, session);
    this.idle(session);
    return this.describe(session);
  }

  /** GET /v1/live/sessions/{id} */
  get(id: string): Record<string, unknown> {
    return this.describe(this.find(id));
  }

  /** DELETE /v1/live/sessions/{id}: its calls waiting are refused, the one running finishes, then it is freed. */
  delete(id: string): Record<string, unknown> {
    this.free(this.find(id));
    return { id, object: 'live.session.deleted', deleted: true };
  }

  /** POST /v1/live/sessions/{id}/frames: resolves once the frame is added, or replaced by a newer one. */
  addFrame(model: PVCModel, id: string, bytes: Buffer, signal: AbortSignal): Promise<FrameResult> {
    const session = this.find(id);
    checkSignature(bytes, 'image', 'body');
    if (session.live.frames >= session.live.maxFrames)
      throw badRequest('body', `the session holds its max_frames ${session.live.maxFrames} frames`, 'max_frames_reached');
    return new Promise<FrameResult>((done, fail) => {
      const replaced = session.waiting;
      if (replaced !== null) {
        session.dropped++;
        replaced.done(this.frameResult(session, false));
      } else {
        this.enter(session);
      }
      const entry: Waiting = { bytes, signal, done, fail };
      session.waiting = entry;
      // A client that leaves while its frame waits takes it back (not a drop).
      signal.addEventListener(
        'abort',
        () => {
          if (session.waiting !== entry) return;
          session.waiting = null;
          this.leave(session);
          fail(signal.reason);
        },
        { once: true },
      );
      void this.pump(model, session);
    });
  }

  /**
   * POST /v1/live/sessions/{id}/chat/completions: runs `answer` with the session once it has the
   * generation slot (after the frames posted before it).
   */
  async ask<T>(id: string, signal: AbortSignal, answer: (live: LiveVideo) => Promise<T>): Promise<T> {
    const session = this.find(id);
    this.enter(session);
    try {
      const release = await this.queue.acquire(signal, true); // the model alone (not in the batch: the session's own caches)
      try {
        throwIfAborted(signal);
        if (this.sessions.get(id) !== session) this.find(id); // deleted while the question waited: 404
        return await answer(session.live);
      } finally {
        release();
      }
    } finally {
      this.leave(session);
    }
  }

  /** Frees every session (server shutdown). */
  close(): void {
    for (const session of [...this.sessions.values()]) this.free(session);
  }

  /** Adds the waiting frame, then the next one that came meanwhile, until none waits. */
  private async pump(model: PVCModel, session: Session): Promise<void> {
    if (session.adding) return;
    session.adding = true;
    try {
      while (session.waiting !== null) {
        // The slot is waited for on the session's behalf, not the frame's: a newer frame that replaces
        // the waiting one keeps its place in the queue.
        let release: () => void;
        try {
          release = await this.queue.acquire(session.freed.signal, true);
        } catch (e) {
          // The queue is full (429), or the session was freed (its frame was answered then).
          const waiting = session.waiting;
          if (waiting !== null) {
            session.waiting = null;
            this.leave(session);
            waiting.fail(e);
          }
          continue;
        }
        try {
          const next = session.waiting; // the newest frame posted
          if (next === null) continue; // taken back while the slot was waited for
          session.waiting = null; // this frame is being added: a frame posted now waits for it
          try {
            const frame = await decodeImagePart(next.bytes, { inputSize: model.config.image_size, maxNum: 1, maxPixels: this.limits.maxImagePixels }, 'body');
            try {
              if (this.sessions.get(session.id) !== session) this.find(session.id); // deleted while it was decoded: 404
              await session.live.addFrame(frame.pixelValues, { signal: next.signal });
            } finally {
              frame.pixelValues.dispose();
            }
            next.done(this.frameResult(session, true));
          } catch (e) {
            next.fail(frameError(e, this.limits.liveAnswerPositions));
          } finally {
            this.leave(session);
          }
        } finally {
          release();
        }
      }
    } finally {
      session.adding = false;
    }
  }

  private frameResult(session: Session, added: boolean): FrameResult {
    return { object: 'live.frame', added, frames: session.live.frames, dropped: session.dropped, positions: session.live.positions };
  }

  private describe(session: Session): Record<string, unknown> {
    const { live } = session;
    return {
      id: session.id,
      object: 'live.session',
      created: session.created,
      frames: live.frames,
      max_frames: live.maxFrames,
      dropped: session.dropped,
      /** A posted frame waits for the one being added (or for the slot): the next one posted would replace it. */
      frame_waiting: session.waiting !== null,
      positions: live.positions,
      max_positions: live.maxPositions,
      expires_in: session.calls > 0 ? null : Math.max(0, Math.round((session.expiresAt - Date.now()) / 1000)),
    };
  }

  /** The session `id` (a 404 if there is none); any request for it restarts its idle timer. */
  private find(id: string): Session {
    const session = this.sessions.get(id);
    if (session === undefined)
      throw new ApiError(404, `no live session '${id.slice(0, 100)}' (it was deleted, timed out, or never existed)`, 'session', 'session_not_found');
    if (session.calls === 0) this.idle(session);
    return session;
  }

  private enter(session: Session): void {
    session.calls++;
    clearTimeout(session.timer);
  }

  private leave(session: Session): void {
    if (--session.calls === 0 && this.sessions.get(session.id) === session) this.idle(session);
  }

  /** Starts the idle timer: the session is freed after limits.liveSessionIdleMs without a call. */
  private idle(session: Session): void {
    clearTimeout(session.timer);
    session.expiresAt = Date.now() + this.limits.liveSessionIdleMs;
    session.timer = setTimeout(() => this.free(session), this.limits.liveSessionIdleMs).unref();
  }

  private free(session: Session): void {
    clearTimeout(session.timer);
    this.sessions.delete(session.id);
    session.freed.abort();
    const waiting = session.waiting;
    session.waiting = null;
    waiting?.fail(new ApiError(404, `the live session '${session.id}' was deleted`, 'session', 'session_not_found'));
    session.live.dispose(); // after the call running, if any
  }
}

/** The session's own limits as the API's errors (400 with a code); other errors as they are. */
function frameError(e: unknown, answerPositions: number): unknown {
  if (!(e instanceof InputError)) return e;
  if (/would take the prompt to/.test(e.message))
    return badRequest('body', `${e.message} (--max-model-len less ${answerPositions} positions kept for answers)`, 'context_length_exceeded');
  if (/holds its maxFrames/.test(e.message)) return badRequest('body', e.message.replace('maxFrames', 'max_frames'), 'max_frames_reached');
  return e;
}

/** The request's body as a frame: an image's bytes (Content-Type image/*, or application/octet-stream). */
export function checkFrameType(req: http.IncomingMessage): void {
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (!(type.startsWith('image/') || type === 'application/octet-stream'))
    throw badRequest('body', `a frame is the image's bytes (Content-Type image/jpeg, image/png, ...), not ${type || 'no Content-Type'}`, 'invalid_image');
}
