// The tiling thread (see tiles.ts): tiles each image it is sent and sends the tiles back, their
// buffers transferred.
import { parentPort } from 'worker_threads';
import { tile, TileReply, TileRequest } from './tiles';

const port = parentPort!;
port.on('message', ({ id, image, options, returnTiles }: TileRequest) => {
  let reply: TileReply;
  try {
    reply = { id, tiled: tile(image, options, returnTiles) };
  } catch (e) {
    return port.postMessage({ id, error: (e as Error)?.message ?? String(e) } satisfies TileReply);
  }
  const { pixels, tiles } = reply.tiled;
  port.postMessage(reply, [pixels.buffer as ArrayBuffer, ...(tiles ?? []).map((t) => t.data.buffer as ArrayBuffer)]);
});
