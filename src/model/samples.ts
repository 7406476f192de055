// What the pixels of a request are: samples (upstream's split_sizes), each a single image, several
// images or a video (PVC's data_flag), each with its tiles per image or per frame.
import { PVCConfig } from '../config';
import { InputError } from '../errors';

/** PVC's data_flag: 1 single image, 2 multi-image, 3 video. */
export type DataFlag = 1 | 2 | 3;

export interface Sample {
  dataFlag: DataFlag | undefined;
  /** Index of the sample's first tile in pixelValues. */
  firstTile: number;
  /** Tiles per image, or per video frame (one entry per <image> placeholder). */
  tilesPerImage: number[];
}

export function checkDataFlag(dataFlag: unknown): void {
  for (const flag of Array.isArray(dataFlag) ? dataFlag : [dataFlag]) {
    if (flag !== undefined && flag !== 1 && flag !== 2 && flag !== 3) {
      throw new InputError('dataFlag', `dataFlag ${JSON.stringify(flag)}: expected 1 (single image), 2 (multi-image) or 3 (video)`);
    }
  }
}

/**
 * The samples of a request: splitSizes (tiles per sample) partitions numPatchesList's entries (tiles
 * per image, upstream's name); each sample has its own dataFlag.
 */
export function samplesOf(numPatchesList: number[], dataFlag: DataFlag | DataFlag[] | undefined, splitSizes?: number[]): Sample[] {
  checkDataFlag(dataFlag);
  const total = numPatchesList.reduce((a, b) => a + b, 0);
  const sizes = splitSizes ?? (total > 0 ? [total] : []);
  const flags = Array.isArray(dataFlag) ? dataFlag : sizes.map(() => dataFlag);
  if (flags.length !== sizes.length)
    throw new InputError('dataFlag', `dataFlag has ${flags.length} entries but there are ${sizes.length} samples (splitSizes [${sizes}])`);
  const samples: Sample[] = [];
  let entry = 0;
  let firstTile = 0;
  sizes.forEach((size, s) => {
    const tilesPerImage: number[] = [];
    let tiles = 0;
    while (tiles < size && entry < numPatchesList.length) tiles += (tilesPerImage.push(numPatchesList[entry]), numPatchesList[entry++]);
    if (tiles !== size)
      throw new InputError(
        'splitSizes',
        `splitSizes [${sizes}] does not follow numPatchesList [${numPatchesList}] (sample ${s} would take ${tiles} tiles, not ${size})`,
      );
    samples.push({ dataFlag: flags[s], firstTile, tilesPerImage });
    firstTile += size;
  });
  if (entry !== numPatchesList.length) throw new InputError('splitSizes', `splitSizes [${sizes}] covers ${firstTile} of the ${total} tiles`);
  return samples;
}

/** PVC: how many frames each tile becomes: image_repeat_time for images (dataFlag 1, 2 or none), video_repeat_time for video. */
export function repeatsFor(pvc: PVCConfig, dataFlag: DataFlag | undefined): number {
  return dataFlag === 3 ? pvc.video_repeat_time : pvc.image_repeat_time;
}
