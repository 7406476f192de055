// A request's media as chat() takes them, in one place for the CLI, the server, the examples and the
// report: images (each loadImage's tiles) or one video (loadVideo's frames, one tile each) -> pixel
// values, numPatchesList, PVC's data flag, and the question with a placeholder line per image or frame.
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../errors';
import { DataFlag } from '../model/samples';
import { ImageOptions, LoadedImage, loadImage } from '../preprocess/image';
import { LoadedVideo, loadVideo } from '../preprocess/video';
import { withImagePlaceholders } from './prompt';

/** Decoded media: several images, one video, or a video's frames given as images (one tile each). */
export type LoadedMedia =
  | { images: LoadedImage[]; video?: undefined; frames?: undefined }
  | { video: LoadedVideo; images?: undefined; frames?: undefined }
  | { frames: LoadedImage[]; images?: undefined; video?: undefined };

export interface ChatInputs {
  /** [tiles, 3, S, S], or null without media; the caller disposes it. */
  pixelValues: tf.Tensor4D | null;
  numPatchesList?: number[];
  /** 1 one image, 2 several images, 3 a video. */
  dataFlag?: DataFlag;
  /** Placeholder lines per image ("Image-1: <image>\n...") or frame ("Frame1: <image>\n...") in front of `question`. */
  withPlaceholders(question: string): string;
}

/** The chat inputs of decoded media; takes ownership of their pixel values (several images are concatenated). */
export function chatInputs(media: LoadedMedia | null): ChatInputs {
  if (media?.video) {
    const { pixelValues, numPatchesList } = media.video;
    return { pixelValues, numPatchesList, dataFlag: 3, withPlaceholders: (q) => withImagePlaceholders(q, numPatchesList.length, 'video') };
  }
  if (media?.frames) {
    const pixelValues = tf.concat(media.frames.map((f) => f.pixelValues)) as tf.Tensor4D;
    media.frames.forEach((f) => f.pixelValues.dispose());
    const numPatchesList = media.frames.map((f) => f.numPatches);
    return { pixelValues, numPatchesList, dataFlag: 3, withPlaceholders: (q) => withImagePlaceholders(q, numPatchesList.length, 'video') };
  }
  const images = media?.images ?? [];
  if (images.length === 0) return { pixelValues: null, withPlaceholders: (q) => q };
  const pixelValues = images.length === 1 ? images[0].pixelValues : (tf.concat(images.map((i) => i.pixelValues)) as tf.Tensor4D);
  if (images.length > 1) images.forEach((i) => i.pixelValues.dispose());
  return {
    pixelValues,
    numPatchesList: images.map((i) => i.numPatches),
    dataFlag: images.length > 1 ? 2 : 1,
    withPlaceholders: (q) => withImagePlaceholders(q, images.length, 'images'),
  };
}

export interface MediaFiles {
  images?: (string | Buffer)[];
  video?: string;
  /** A video as its frame images, in order (each one tile, as a video's frames are). */
  frames?: (string | Buffer)[];
}

export interface MediaOptions extends Pick<ImageOptions, 'maxNum' | 'maxPixels'> {
  /** The model's image_size. */
  inputSize: number;
  /** Frames sampled from a video. */
  numFrames?: number;
}

/** Loads images (files or bytes), one video file, or a video's frame images: the decoded media (for the report) and their chat inputs. */
export async function loadChatInputs(files: MediaFiles, options: MediaOptions): Promise<{ media: LoadedMedia | null; inputs: ChatInputs }> {
  const images = files.images ?? [];
  const frames = files.frames ?? [];
  if ([files.video !== undefined, images.length > 0, frames.length > 0].filter(Boolean).length > 1)
    throw new InputError(files.video !== undefined ? 'video' : 'frames', 'give images, one video or its frames, not two of them');
  let media: LoadedMedia | null = null;
  const loadAll = async (sources: (string | Buffer)[], maxNum: number | undefined) => {
    const loaded: LoadedImage[] = [];
    try {
      for (const source of sources) loaded.push(await loadImage(source, { inputSize: options.inputSize, maxNum, maxPixels: options.maxPixels }));
    } catch (e) {
      loaded.forEach((i) => i.pixelValues.dispose());
      throw e;
    }
    return loaded;
  };
  if (files.video !== undefined) {
    media = { video: await loadVideo(files.video, { numSegments: options.numFrames, inputSize: options.inputSize, maxNum: 1 }) };
  } else if (images.length > 0) {
    media = { images: await loadAll(images, options.maxNum) };
  } else if (frames.length > 0) {
    media = { frames: await loadAll(frames, 1) };
  }
  return { media, inputs: chatInputs(media) };
}
