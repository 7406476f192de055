// pvc serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--allowed-local-media-path DIR]
//           [--max-queue N] [--served-model-name NAME] [--backend B]
// Listens at once (503 while the model loads), runs until SIGINT / SIGTERM.
import * as path from 'path';
import { BackendName } from '../backend';
import { PVCModel } from '../pvc_model';
import { DEFAULT_LIMITS } from './limits';
import { ChatServer } from './server';

export const SERVE_USAGE = `usage: pvc serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--allowed-local-media-path DIR]
                 [--max-queue N] [--served-model-name NAME] [--backend B]
  An OpenAI-compatible server: GET /v1/models, POST /v1/chat/completions (stream or not), GET /health.
  --api-key KEY                    require "Authorization: Bearer KEY" (also read from PVC_API_KEY)
  --allowed-local-media-path DIR   requests may name files (paths, file:// URLs) under DIR; none otherwise
  --max-queue N                    requests waiting behind the running one before 429 (default ${DEFAULT_LIMITS.maxQueue})
  --served-model-name NAME         the name clients pass as "model" (default: the model directory's name)`;

export async function serveCommand(argv: string[]): Promise<number> {
  const o: { model?: string; host?: string; port?: number; apiKey?: string; media?: string; maxQueue?: number; name?: string; backend?: BackendName } = {};
  try {
    for (let i = 0; i < argv.length; i++) {
      const flag = argv[i];
      const value = () => {
        if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
        return argv[++i];
      };
      const int = () => {
        const v = Number(value());
        if (!Number.isInteger(v) || v < 0) throw new Error(`${flag} expects a non-negative integer`);
        return v;
      };
      switch (flag) {
        case '--model':
          o.model = value();
          break;
        case '--host':
          o.host = value();
          break;
        case '--port':
          o.port = int();
          break;
        case '--api-key':
          o.apiKey = value();
          break;
        case '--allowed-local-media-path':
          o.media = value();
          break;
        case '--max-queue':
          o.maxQueue = int();
          break;
        case '--served-model-name':
          o.name = value();
          break;
        case '--backend':
          o.backend = value() as BackendName;
          break;
        case '--help':
        case '-h':
          process.stdout.write(SERVE_USAGE + '\n');
          return 0;
        default:
          throw new Error(`unknown option ${flag}`);
      }
    }
    if (!o.model) throw new Error('--model DIR is required');
  } catch (e) {
    process.stderr.write(`pvc serve: ${(e as Error).message}\n${SERVE_USAGE}\n`);
    return 2;
  }
  const model = PVCModel.load(o.model, { backend: o.backend });
  const server = await ChatServer.start({
    model,
    modelName: o.name ?? path.basename(path.resolve(o.model)),
    host: o.host,
    port: o.port,
    apiKey: o.apiKey ?? process.env.PVC_API_KEY,
    allowedLocalMediaPath: o.media,
    limits: o.maxQueue === undefined ? {} : { maxQueue: o.maxQueue },
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
