// pvc serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--allowed-local-media-path DIR]
//           [--max-batch N] [--max-queue N] [--max-model-len N] [--served-model-name NAME] [--feature-cache-mb N]
//           [--images-as-video] [--*-timeout S] [--backend B] [--weights W] [--matmul M]
// Listens at once (503 while the model loads), runs until SIGINT / SIGTERM.
import * as path from 'path';
import { BACKEND_NAMES } from '../backend';
import { flag, number, oneOf, parseOptions, text, value, Values, WEIGHT_OPTIONS, WEIGHT_USAGE, weightLoadOptions } from './args';
import { PVCModel } from '../pvc_model';
import { DEFAULT_LIMITS, ServerLimits } from '../server/limits';
import { ChatServer } from '../server/server';

export const SERVE_USAGE = `usage: pvc serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--allowed-local-media-path DIR]
                 [--max-batch N] [--max-queue N] [--max-model-len N] [--served-model-name NAME] [--feature-cache-mb N]
                 [--images-as-video] [--headers-timeout S] [--request-timeout S]
                 [--body-idle-timeout S] [--keep-alive-timeout S] [--max-live-sessions N] [--live-max-frames N]
                 [--live-session-timeout S] [--backend B] [--weights W] [--matmul M]
  An OpenAI-compatible server: GET /v1/models, POST /v1/chat/completions (stream or not), GET /health,
  GET /metrics (Prometheus); live video sessions under /v1/live/sessions (README, "Live video").
  Requests admitted together decode in one batch (continuous batching); a beam search runs alone.
  --api-key KEY                    require "Authorization: Bearer KEY" (also read from PVC_API_KEY)
  --allowed-local-media-path DIR   requests may name files (paths, file:// URLs) under DIR; none otherwise
  --max-batch N                    requests admitted at once, decoded together (default ${DEFAULT_LIMITS.maxBatch}; 1: one at a time)
  --max-queue N                    requests waiting behind them before 429 (default ${DEFAULT_LIMITS.maxQueue}); a harness sending
                                   C requests at once needs max-batch + max-queue >= C (lmms-eval: 32 by default)
  --max-model-len N                prompt plus max_tokens a request may ask for (default max_position_embeddings
                                   x the rope_scaling factor, vLLM's rule; the model itself refuses no length)
  --served-model-name NAME         the name clients pass as "model" (default: the model directory's name); VLMEvalKit
                                   uses its InternVL2 prompts when the name contains "internvl2"
  --feature-cache-mb N             MiB of visual tokens kept for media sent again (default ${DEFAULT_LIMITS.featureCacheBytes / 2 ** 20}; 0: none)
  --images-as-video                a request's images are one video's frames (PVC's video path) unless it sets
                                   "images_as_video": false; for harnesses that send a video as image_url frames
  --headers-timeout S              seconds a client has to send a request's headers (default ${DEFAULT_LIMITS.headersTimeoutMs / 1000})
  --request-timeout S              seconds a client has to send a whole request (default ${DEFAULT_LIMITS.requestTimeoutMs / 1000})
  --body-idle-timeout S            seconds a request body may pause between chunks (default ${DEFAULT_LIMITS.bodyIdleTimeoutMs / 1000})
  --keep-alive-timeout S           seconds an idle connection stays open between requests (default ${DEFAULT_LIMITS.keepAliveTimeoutMs / 1000})
                                   (a client over a timeout gets 408 and its connection closed)
  --max-live-sessions N            live video sessions held at once (default ${DEFAULT_LIMITS.maxLiveSessions}; 0: none)
  --live-max-frames N              most frames a live session takes (default ${DEFAULT_LIMITS.maxLiveFrames})
  --live-session-timeout S         seconds a live session is kept without a request (default ${DEFAULT_LIMITS.liveSessionIdleMs / 1000})
${WEIGHT_USAGE}`;

const seconds = number({ above: 0, max: 86400 });

const SERVE_OPTIONS = {
  model: value(text),
  host: value(text),
  port: value(number({ integer: true, min: 0, max: 65535 })),
  apiKey: value(text),
  allowedLocalMediaPath: value(text),
  maxBatch: value(number({ integer: true, min: 1, max: 256 })),
  maxQueue: value(number({ integer: true, min: 0 })),
  featureCacheMb: value(number({ min: 0, max: 1 << 20 })),
  imagesAsVideo: flag(),
  maxModelLen: value(number({ integer: true, min: 1 })),
  servedModelName: value(text),
  headersTimeout: value(seconds),
  requestTimeout: value(seconds),
  bodyIdleTimeout: value(seconds),
  keepAliveTimeout: value(seconds),
  maxLiveSessions: value(number({ integer: true, min: 0 })),
  liveMaxFrames: value(number({ integer: true, min: 1 })),
  liveSessionTimeout: value(seconds),
  backend: value(oneOf(BACKEND_NAMES)),
  ...WEIGHT_OPTIONS,
  help: flag('h'),
};

/** The limits the flags set (the others keep DEFAULT_LIMITS). */
function serverLimits(o: Values<typeof SERVE_OPTIONS>): Partial<ServerLimits> {
  const limits: Partial<ServerLimits> = {};
  if (o.maxQueue !== undefined) limits.maxQueue = o.maxQueue;
  if (o.maxBatch !== undefined) limits.maxBatch = o.maxBatch;
  if (o.featureCacheMb !== undefined) limits.featureCacheBytes = Math.round(o.featureCacheMb * 2 ** 20);
  const ms = (s: number) => Math.round(s * 1000);
  if (o.headersTimeout !== undefined) limits.headersTimeoutMs = ms(o.headersTimeout);
  if (o.requestTimeout !== undefined) limits.requestTimeoutMs = ms(o.requestTimeout);
  if (o.bodyIdleTimeout !== undefined) limits.bodyIdleTimeoutMs = ms(o.bodyIdleTimeout);
  if (o.keepAliveTimeout !== undefined) limits.keepAliveTimeoutMs = ms(o.keepAliveTimeout);
  if (o.maxLiveSessions !== undefined) limits.maxLiveSessions = o.maxLiveSessions;
  if (o.liveMaxFrames !== undefined) limits.maxLiveFrames = o.liveMaxFrames;
  if (o.liveSessionTimeout !== undefined) limits.liveSessionIdleMs = ms(o.liveSessionTimeout);
  return limits;
}

export async function serveCommand(argv: string[]): Promise<number> {
  let o: Values<typeof SERVE_OPTIONS>;
  try {
    o = parseOptions(argv, SERVE_OPTIONS).values;
    if (o.help) {
      process.stdout.write(SERVE_USAGE + '\n');
      return 0;
    }
    if (!o.model) throw new Error('--model DIR is required');
  } catch (e) {
    process.stderr.write(`pvc serve: ${(e as Error).message}\n${SERVE_USAGE}\n`);
    return 2;
  }
  const model = PVCModel.load(o.model, { backend: o.backend, ...weightLoadOptions(o) });
  const server = await ChatServer.start({
    model,
    modelName: o.servedModelName ?? path.basename(path.resolve(o.model)),
    host: o.host,
    port: o.port,
    apiKey: o.apiKey ?? process.env.PVC_API_KEY,
    allowedLocalMediaPath: o.allowedLocalMediaPath,
    limits: serverLimits(o),
    maxModelLen: o.maxModelLen,
    imagesAsVideo: o.imagesAsVideo,
    log: (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`),
  });
  process.stderr.write(`pvc serve: listening on ${server.url} (model '${server.modelName}' loading from ${o.model})\n`);
  try {
    await model;
  } catch (e) {
    process.stderr.write(`pvc serve: the model failed to load: ${(e as Error).message}\n`);
    await server.close();
    return 1;
  }
  process.stderr.write(`pvc serve: model loaded; ready\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  process.stderr.write('pvc serve: shutting down\n');
  await server.close();
  (await model).dispose();
  return 0;
}
