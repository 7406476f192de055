// The tiling thread (see tiles.ts): tiles each image it is sent and sends the tiles back, their
// buffers transferred (and the image's own, when it was transferred here).
import { parentPort } from 'worker_threads';
import { tile, TileReply, TileRequest } from './tiles';

const port = parentPort!;
port.on('message', ({ id, image, options, call }: TileRequest) => {
  const source = call.transfer ? image.data : undefined;
  const back = source ? [source.buffer as ArrayBuffer] : [];
  let reply: TileReply;
  try {
    reply = { id, tiled: { ...tile(image, options, call.returnTiles), source } };
  } catch (e) {
    return port.postMessage({ id, error: (e as Error)?.message ?? String(e), source } satisfies TileReply, back);
  }
  const { pixels, tiles } = reply.tiled;
  port.postMessage(reply, [pixels.buffer as ArrayBuffer, ...(tiles ?? []).map((t) => t.data.buffer as ArrayBuffer), ...back]);
});
