/// <reference lib="dom" />
// The inspection report's page script, checked and compiled with the DOM's types as its own program
// (tsconfig.page.json; the reference above serves the loaders that compile it alone: ts-jest, tsx).
// It runs in the browser, not in Node: report_page.ts inlines the source of the functions listed in
// PAGE_FUNCTIONS (Function.prototype.toString, after whichever compiler loaded this module) into the
// page and calls reportPage. So these functions must be whole on their own: they call one another and
// the browser's globals only (no import at run time, no other value of this module, no library, no
// network). The page reads the JSON block #report-data (a ReportData), builds the DOM with textContent
// (never innerHTML: tokens and prompts are data) and draws on canvases.
import type { ReportData } from './report_data';

type Child = Node | string | number | null | undefined;
type Attrs = Record<string, string | number | boolean | ((e: Event) => void)>;
type Options = [number, string][];

/** The page: reads the data, builds each section, draws the attention once the pictures have decoded. */
function reportPage(): void {
  const D = JSON.parse(document.getElementById('report-data')!.textContent!) as ReportData;
  const root = document.getElementById('report')!;
  root.textContent = '';
  const attention = attentionSection(D);
  const temporal = temporalSection(D);
  root.append(summarySection(D), attention.section);
  if (attention.view) root.append(textSection(attention.view));
  root.append(...(temporal ? [temporal] : []), lensSection(D), statsSection(D));
  const { pictures, draw } = attention;
  Promise.all(
    pictures.map((p) =>
      p.complete
        ? Promise.resolve()
        : new Promise<void>((ok, fail) => {
            p.onload = () => ok();
            p.onerror = () => fail(new Error('a picture did not decode'));
          }),
    ),
  ).then(() => {
    draw();
    Object.assign(window, { pvcReportReady: true });
  });
}

/** An element with attributes (on* ones are listeners) and children (text, never markup). */
function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = String(v);
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function fmt(x: number): string {
  return x === 0 ? '0' : Math.abs(x) >= 1e4 || Math.abs(x) < 1e-3 ? x.toExponential(3) : x.toFixed(4);
}

/** A share (0..1) as a percentage. */
function pct(x: number): string {
  const v = 100 * x;
  return (v === 0 ? '0' : v < 0.01 ? v.toExponential(1) : v < 10 ? v.toFixed(2) : v.toFixed(1)) + '%';
}

/**
 * A token as text: sentencepiece's word marker as a space, byte tokens (<0x0A>) as their character, in
 * quotes; special tokens (<|im_end|>, <s>, <img>, ...) as they are, flagged.
 */
function tokenLabel(t: string): { text: string; special: boolean } {
  if (/^<\|.*\|>$|^<\/?(s|unk|img|IMG_CONTEXT|quad|ref|box)>$/.test(t)) return { text: t, special: true };
  const bytes = /^<0x([0-9A-Fa-f]{2})>$/.exec(t);
  const text = bytes ? String.fromCharCode(parseInt(bytes[1], 16)) : t.replace(/\u2581/g, ' ');
  return { text: JSON.stringify(text), special: false };
}

/** A token as an element: special tokens marked. */
function tokenEl(t: string): HTMLSpanElement {
  const { text, special } = tokenLabel(t);
  return el('span', { class: special ? 'tok special' : 'tok' }, text);
}

/** Heat colours (black, red, yellow, white) for t in [0, 1], as in the PNG heatmap of pvc inspect. */
function heat(t: number): number[] {
  const c = (x: number) => Math.round(255 * Math.min(Math.max(x, 0), 1));
  return [c(3 * t), c(3 * t - 1), c(3 * t - 2)];
}

/** An overlay colour for t in [0, 1] of the scale: red to yellow to white, its opacity t (0: transparent). */
function overlayColour(t: number, opacity: number): number[] {
  const u = Math.min(Math.max(t, 0), 1);
  return [...heat(1 / 3 + (2 / 3) * u), Math.round(255 * u * opacity)];
}

/** A labelled <select> of [value, text] options; onchange gets the value chosen. */
function choice(label: string, id: string, options: Options, value: number, onchange: (value: number) => void): HTMLLabelElement {
  const s = el('select', { id, onchange: () => onchange(Number(s.value)) });
  for (const [v, text] of options) s.append(el('option', { value: String(v) }, text));
  s.value = String(value);
  return el('label', {}, label, s);
}

/** The head options: the mean of heads (0), then head h as h + 1. */
function headOptions(heads: number): Options {
  return [[0, 'mean of heads'], ...Array.from({ length: heads }, (_, h): [number, string] => [h + 1, 'head ' + h])];
}

/** A colour legend over a checkerboard (transparency shows), with the values at 0, 1/4, ... of the scale. */
function legend(max: number, label: string, overlay: boolean): HTMLSpanElement {
  const W = 200;
  const c = el('canvas', { width: W, height: 26, class: 'legend' });
  const g = c.getContext('2d')!;
  for (let x = 0; x < W; x += 6) {
    g.fillStyle = (x / 6) % 2 ? '#ccc' : '#fff';
    g.fillRect(x, 0, 6, 12);
  }
  for (let x = 0; x < W; x++) {
    const [r, gg, b, a] = overlay ? overlayColour(x / (W - 1), 1) : [...heat(x / (W - 1)), 255];
    g.fillStyle = 'rgba(' + r + ',' + gg + ',' + b + ',' + (a / 255).toFixed(3) + ')';
    g.fillRect(x, 0, 1, 12);
  }
  g.fillStyle = '#333';
  g.font = '9px sans-serif';
  for (let i = 0; i <= 4; i++) {
    const text = label === '%' ? pct((max * i) / 4) : fmt((max * i) / 4);
    const w = g.measureText(text).width;
    g.fillText(text, Math.min(Math.max((i / 4) * (W - 1) - w / 2, 0), W - w), 23);
  }
  return el('span', { class: 'legend-box', 'data-max': String(max) }, label === '%' ? 'attention ' : label + ' ', c);
}

/** Summary: the model, the token counts, the answer, the prompt and the notes. */
function summarySection(D: ReportData): HTMLElement {
  const summary = el(
    'section',
    { id: 'summary' },
    el(
      'div',
      {},
      'model: ',
      D.model.dir,
      D.model.pvc ? ' (PVC)' : '',
      ' · ',
      D.model.llmLayers + ' LLM layers, ' + D.model.heads + ' heads · ',
      D.promptTokens + ' prompt tokens, ' + D.visualTokens + ' visual tokens (' + D.model.numImageToken + ' per tile/frame)',
    ),
    el('div', {}, 'answer: ', el('b', { id: 'answer' }, D.answer)),
  );
  if (D.prompt) {
    summary.append(el('details', {}, el('summary', {}, 'prompt'), el('pre', {}, D.prompt)));
    if (/[\u3000-\u9fff]/.test(D.prompt))
      summary.append(
        el(
          'div',
          { class: 'muted' },
          'The prompt has CJK text (the system prompt): where it shows as boxes, no CJK font is installed (Debian: fonts-noto-cjk).',
        ),
      );
  }
  for (const n of D.notes) summary.append(el('div', { class: 'note' }, 'note: ' + n));
  return summary;
}

/** The attention view: the choice made in its controls, the maps and the elements it draws into. */
interface AttentionView {
  D: ReportData;
  state: { token: number; layer: number; head: number; shared: boolean; opacity: number; smooth: boolean };
  /** 8 bits per value relative to each map's scale (its largest value). */
  maps: Uint8Array;
  scales: Float32Array;
  mapSize: number;
  pictures: HTMLImageElement[];
  panels: { picture: HTMLCanvasElement; overlay: HTMLCanvasElement; mass: HTMLSpanElement }[];
  legendSlot: HTMLElement;
  caption: HTMLElement;
  readout: HTMLElement;
  frameCells: HTMLElement[];
  bars: HTMLCanvasElement | null;
  /** The overview grid's cells, [layer][head kept]. */
  grid: { cell: HTMLElement; canvas: HTMLCanvasElement }[][];
  /** Everything drawn from the state: called on every change. */
  redraws: (() => void)[];
}

/** Index of a map: token j, layer index li, head kept h (0 = the mean). */
function mapIndex(view: AttentionView, j: number, li: number, h: number): number {
  return (j * view.D.attention.layers.length + li) * view.D.attention.headsKept + h;
}

/** The attention on the visual tokens of a map (the sum of its panels' masses). */
function imageShare(view: AttentionView, j: number, li: number, h: number): number {
  return view.D.frameMass[j][li][h].reduce((a, b) => a + b, 0);
}

/** The top of the colour scale: the largest cell of any layer and head for the token (shared), or of the map shown. */
function scaleTop(view: AttentionView): number {
  const { state, D, scales } = view;
  if (!state.shared) return scales[mapIndex(view, state.token, D.attention.layers.indexOf(state.layer), Math.min(state.head, D.attention.headsKept - 1))];
  let top = 0;
  for (let li = 0; li < D.attention.layers.length; li++)
    for (let h = 0; h < D.attention.headsKept; h++) top = Math.max(top, scales[mapIndex(view, state.token, li, h)]);
  return top;
}

/** The layer and head (not the mean) whose map has the largest single cell for token j: the sharpest look at the pictures. */
function sharpest(view: AttentionView, j: number): { li: number; h: number } {
  let best = { li: 0, h: 0 };
  let top = -1;
  for (let li = 0; li < view.D.attention.layers.length; li++)
    for (let h = view.D.attention.headsKept > 1 ? 1 : 0; h < view.D.attention.headsKept; h++)
      if (view.scales[mapIndex(view, j, li, h)] > top) {
        top = view.scales[mapIndex(view, j, li, h)];
        best = { li, h };
      }
  return best;
}

/** Attention of a generated token over the visual tokens: the overview grid, the controls, the pictures and their drawing. */
function attentionSection(D: ReportData): { section: HTMLElement; pictures: HTMLImageElement[]; draw: () => void; view: AttentionView | null } {
  const A = D.attention;
  const pictures = D.pictures.map((p) => Object.assign(new Image(), { src: p.url }));
  const section = el('section', { id: 'attention' }, el('h2', {}, 'Where the model looked: attention of a generated token over the visual tokens'));
  if (A.tokens === 0) {
    section.append(el('div', { class: 'muted' }, 'no attention recorded: inspect with taps llm.layers.*.attn.probs and generate at least one token'));
    return { section, pictures, draw: () => {}, view: null };
  }
  const view: AttentionView = {
    D,
    state: { token: 0, layer: A.initial.layer, head: A.initial.head, shared: true, opacity: 0.85, smooth: false },
    maps: Uint8Array.from(atob(A.maps), (c) => c.charCodeAt(0)),
    scales: new Float32Array(Uint8Array.from(atob(A.scales), (c) => c.charCodeAt(0)).buffer),
    mapSize: D.panels.reduce((a, p) => a + p.tiles.length * A.g * A.g, 0),
    pictures,
    panels: [],
    legendSlot: el('span'),
    caption: el('div', { id: 'view-caption', class: 'caption' }),
    readout: el('div', { id: 'readout', class: 'readout' }, 'hover over a picture for the value of a cell'),
    frameCells: [],
    bars: null,
    grid: [],
    redraws: [],
  };
  const draw = () => view.redraws.forEach((f) => f());
  section.append(...attentionControls(view, draw));
  if (D.panels.length === 0) {
    section.append(el('div', { class: 'muted' }, 'no images or frames were given to the report: only the attention to the prompt (below) is shown'));
    return { section, pictures, draw, view };
  }
  section.append(overviewGrid(view, draw), view.caption, attentionPanels(view), view.readout);
  if (D.model.dataFlag === 3) section.append(...frameBars(view));
  view.redraws.push(
    () => drawAttention(view),
    () => drawOverview(view),
  );
  return { section, pictures, draw, view };
}

/** The generated tokens to choose from, the layer, head, scale, opacity and smoothing, and the legend's slot. */
function attentionControls(view: AttentionView, redraw: () => void): HTMLElement[] {
  const { D, state } = view;
  const A = D.attention;
  const tokens = el('div', { class: 'tokens' }, 'generated token: ');
  D.generated.slice(0, A.tokens).forEach((t, j) =>
    tokens.append(
      el(
        'button',
        {
          'data-token': j,
          onclick: () => {
            state.token = j;
            redraw();
          },
        },
        j + ': ',
        tokenEl(t),
      ),
    ),
  );
  view.redraws.push(() => tokens.querySelectorAll<HTMLElement>('button').forEach((b) => b.classList.toggle('on', Number(b.dataset.token) === state.token)));
  const heads = headOptions(A.headsKept > 1 ? D.model.heads : 0);
  const layerSelect = choice(
    'LLM layer ',
    'layer',
    A.layers.map((l) => [l, String(l)]),
    state.layer,
    (v) => {
      state.layer = v;
      redraw();
    },
  );
  const headSelect = choice('head ', 'head', heads, state.head, (v) => {
    state.head = v;
    redraw();
  });
  view.redraws.push(() => {
    layerSelect.querySelector('select')!.value = String(state.layer);
    headSelect.querySelector('select')!.value = String(state.head);
  });
  const scaleSelect = choice(
    'colour scale ',
    'scale',
    [
      [1, 'shared: every layer and head of this token'],
      [0, "this map's own largest cell (faded by its image share)"],
    ],
    1,
    (v) => {
      state.shared = v === 1;
      redraw();
    },
  );
  return [
    el(
      'div',
      { class: 'muted' },
      "The attention row of the position that predicted the chosen token (the prompt's last position for token 0) over the visual tokens, each cell summed over its tile's frames" +
        (A.pool > 1 ? ', pooled ' + A.pool + 'x' + A.pool : '') +
        '. Zero attention is transparent; the colour and its opacity grow with the value.',
    ),
    tokens,
    el(
      'div',
      { class: 'controls' },
      layerSelect,
      headSelect,
      scaleSelect,
      el(
        'label',
        {},
        'opacity ',
        el('input', {
          id: 'opacity',
          type: 'range',
          min: 0,
          max: 1,
          step: 0.05,
          value: state.opacity,
          oninput: (e) => {
            state.opacity = Number((e.target as HTMLInputElement).value);
            redraw();
          },
        }),
      ),
      el(
        'label',
        {},
        el('input', {
          id: 'smooth',
          type: 'checkbox',
          onchange: (e) => {
            state.smooth = (e.target as HTMLInputElement).checked;
            redraw();
          },
        }),
        ' smooth',
      ),
      view.legendSlot,
    ),
  ];
}

/** Small multiples: every layer x (mean, heads) for the chosen token, its share on the visual tokens printed; a click shows it. */
function overviewGrid(view: AttentionView, redraw: () => void): HTMLElement {
  const { D, state } = view;
  const A = D.attention;
  const first = D.panels[0];
  const W = 64;
  const H = D.model.dataFlag === 3 ? 28 : Math.max(16, Math.round(W / first.aspect));
  const table = el('table', { class: 'overview', id: 'overview' });
  table.append(el('tr', {}, el('th', {}, 'layer'), ...Array.from({ length: A.headsKept }, (_, h) => el('th', {}, h === 0 ? 'mean' : 'head ' + (h - 1)))));
  for (let li = A.layers.length - 1; li >= 0; li--) {
    const row = el('tr', {}, el('th', {}, String(A.layers[li])));
    const cells: { cell: HTMLElement; canvas: HTMLCanvasElement }[] = [];
    for (let h = 0; h < A.headsKept; h++) {
      const canvas = el('canvas', { width: W, height: H });
      const cell = el(
        'td',
        {
          'data-layer': A.layers[li],
          'data-head': h,
          title: 'layer ' + A.layers[li] + ', ' + (h === 0 ? 'mean of heads' : 'head ' + (h - 1)),
          onclick: () => {
            state.layer = A.layers[li];
            state.head = h;
            redraw();
          },
        },
        canvas,
        el('div', { class: 'share' }),
      );
      cells.push({ cell, canvas });
      row.append(cell);
    }
    view.grid[li] = cells;
    table.append(row);
  }
  return el(
    'div',
    {},
    el(
      'div',
      { class: 'muted' },
      'Every layer and head for the chosen token' +
        (D.model.dataFlag === 3 ? ' (bars: the attention on each frame)' : ' (the first picture)') +
        ', with its share of attention on all visual tokens; outlined: the view shown; ★: the sharpest head (the largest attention on one cell). Click one to show it.',
    ),
    el('div', { class: 'scroll' }, table),
  );
}

/** Draws the overview grid's cells for the chosen token, the chosen one outlined. */
function drawOverview(view: AttentionView): void {
  const { D, state, maps, mapSize } = view;
  const A = D.attention;
  const best = sharpest(view, state.token);
  const top = scaleTop(view);
  const first = D.panels[0];
  view.grid.forEach((cells, li) =>
    cells.forEach(({ cell, canvas }, h) => {
      const k = mapIndex(view, state.token, li, h);
      const share = imageShare(view, state.token, li, h);
      const g = canvas.getContext('2d')!;
      g.clearRect(0, 0, canvas.width, canvas.height);
      if (D.model.dataFlag === 3) {
        const masses = D.frameMass[state.token][li][h];
        const w = canvas.width / masses.length;
        g.fillStyle = '#c0392b';
        masses.forEach((m, f) => g.fillRect(f * w + 1, canvas.height * (1 - m), w - 2, canvas.height * m));
      } else {
        g.fillStyle = '#1a1a1a';
        g.fillRect(0, 0, canvas.width, canvas.height);
        const top2 = state.shared ? top : view.scales[k];
        const img = g.createImageData(canvas.width, canvas.height);
        let offset = 0;
        for (const tile of first.tiles) {
          const [x0, y0, x1, y1] = tile.rect;
          for (let y = Math.floor(y0 * canvas.height); y < Math.floor(y1 * canvas.height); y++)
            for (let x = Math.floor(x0 * canvas.width); x < Math.floor(x1 * canvas.width); x++) {
              const cx = Math.min(A.g - 1, Math.floor(((x / canvas.width - x0) / (x1 - x0)) * A.g));
              const cy = Math.min(A.g - 1, Math.floor(((y / canvas.height - y0) / (y1 - y0)) * A.g));
              const v = (maps[k * mapSize + offset + cy * A.g + cx] / 255) * view.scales[k];
              const [r, gg, b, a] = overlayColour(top2 > 0 ? v / top2 : 0, state.shared ? 1 : share);
              img.data.set([r, gg, b, a], (y * canvas.width + x) * 4);
            }
          offset += A.g * A.g;
        }
        const back = document.createElement('canvas');
        back.width = canvas.width;
        back.height = canvas.height;
        back.getContext('2d')!.putImageData(img, 0, 0);
        g.drawImage(back, 0, 0);
      }
      cell.querySelector('.share')!.textContent = (li === best.li && h === best.h ? '★ ' : '') + pct(share);
      cell.classList.toggle('best', li === best.li && h === best.h);
      cell.classList.toggle('on', A.layers[li] === state.layer && h === Math.min(state.head, A.headsKept - 1));
    }),
  );
}

/** A picture canvas and an overlay canvas per panel (image tiles, thumbnail or frame), at a readable size, with the attention mass on its tokens. */
function attentionPanels(view: AttentionView): HTMLElement {
  const { D } = view;
  const panels = el('div', { class: 'panels' });
  const isFrame = D.model.dataFlag === 3;
  D.panels.forEach((p, k) => {
    // Small inputs scaled up: the longer side at least 360 px (frames 200), at most 720.
    const side = isFrame ? 200 : Math.min(720, Math.max(360, Math.max(D.pictures[p.picture].width, D.pictures[p.picture].height)));
    const width = Math.round(p.aspect >= 1 ? side : side * p.aspect);
    const height = Math.round(p.aspect >= 1 ? side / p.aspect : side);
    const picture = el('canvas', { width, height, class: 'picture' });
    const overlay = el('canvas', { width, height, class: 'overlay', 'data-panel': p.label });
    overlay.addEventListener('mousemove', (e) => readCell(view, k, e));
    const mass = el('span', { class: 'mass' });
    view.panels.push({ picture, overlay, mass });
    panels.append(
      el(
        'div',
        { class: 'panel' },
        el('div', { class: 'stack' }, picture, overlay),
        el('div', { class: 'panel-label' }, p.label + ' · ' + p.tokens + ' tokens · attention ', mass),
      ),
    );
  });
  return panels;
}

/** The visual token's prompt position (from the runs of visual positions). */
function promptPosition(D: ReportData, visual: number): number {
  let seen = 0;
  for (const [start, count] of D.attention.positions) {
    if (visual < seen + count) return start + visual - seen;
    seen += count;
  }
  return -1;
}

/** The hover readout: which cell is under the pointer, its visual tokens, tile or frame, value and share. */
function readCell(view: AttentionView, k: number, e: MouseEvent): void {
  const { D, state } = view;
  const A = D.attention;
  const p = D.panels[k];
  const c = view.panels[k].overlay;
  const box = c.getBoundingClientRect();
  const fx = (e.clientX - box.left) / box.width;
  const fy = (e.clientY - box.top) / box.height;
  let offset = D.panels.slice(0, k).reduce((a, q) => a + q.tiles.length * A.g * A.g, 0);
  p.tiles.forEach((tile, t) => {
    const [x0, y0, x1, y1] = tile.rect;
    if (fx >= x0 && fx < x1 && fy >= y0 && fy < y1) {
      const cx = Math.min(A.g - 1, Math.floor(((fx - x0) / (x1 - x0)) * A.g));
      const cy = Math.min(A.g - 1, Math.floor(((fy - y0) / (y1 - y0)) * A.g));
      const li = A.layers.indexOf(state.layer);
      const h = Math.min(state.head, A.headsKept - 1);
      const mk = mapIndex(view, state.token, li, h);
      const value = (view.maps[mk * view.mapSize + offset + cy * A.g + cx] / 255) * view.scales[mk];
      const share = imageShare(view, state.token, li, h);
      const g0 = tile.g;
      const visual = tile.first + cy * A.pool * g0 + cx * A.pool;
      const where = p.kind === 'tiles' ? 'tile ' + (t + 1) + ' of ' + p.tiles.length : p.kind === 'thumbnail' ? 'thumbnail' : p.label;
      const tokensText =
        (A.pool > 1 ? A.pool + 'x' + A.pool + ' tokens from ' : '') +
        'visual token ' +
        visual +
        ' (prompt position ' +
        promptPosition(D, visual) +
        ')' +
        (tile.frames > 1 ? ' and its ' + (tile.frames - 1) + ' repeats (PVC repeats an image tile as ' + tile.frames + ' frames)' : '');
      view.readout.dataset.value = String(value);
      view.readout.dataset.panel = String(k);
      view.readout.dataset.cell = String(offset + cy * A.g + cx);
      view.readout.textContent =
        where +
        ', cell (' +
        cx +
        ', ' +
        cy +
        '): ' +
        tokensText +
        ' · attention ' +
        pct(value) +
        ' · ' +
        (share > 0 ? pct(value / share) : '0%') +
        ' of the attention on the visual tokens';
    }
    offset += A.g * A.g;
  });
}

/** Video: the frames' token counts and the attention on each frame, in a table and as bars with an axis. */
function frameBars(view: AttentionView): HTMLElement[] {
  const { D } = view;
  const bars = el('canvas', { width: Math.max(240, 40 + D.panels.length * 36), height: 150, id: 'frame-bars' });
  view.bars = bars;
  view.frameCells = D.panels.map(() => el('td'));
  const table = el(
    'table',
    { id: 'frames' },
    el('tr', {}, el('th', {}, 'frame'), ...D.panels.map((p) => el('th', {}, p.label))),
    el('tr', {}, el('th', {}, 'visual tokens'), ...D.panels.map((p) => el('td', {}, p.tokens))),
    el('tr', {}, el('th', {}, 'attention'), ...view.frameCells),
  );
  return [
    el('h2', {}, 'Frames: tokens and attention per frame'),
    table,
    el('div', { class: 'muted' }, "attention of the chosen token, layer and head on each frame's tokens:"),
    bars,
  ];
}

/** Draws the chosen map over every panel's picture, the caption, the masses, the legend and the frame bars. */
function drawAttention(view: AttentionView): void {
  const { D, state, maps, scales, mapSize } = view;
  const A = D.attention;
  const li = A.layers.indexOf(state.layer);
  const h = Math.min(state.head, A.headsKept - 1);
  const k = mapIndex(view, state.token, li, h);
  const map = maps.subarray(k * mapSize, (k + 1) * mapSize);
  const top = scaleTop(view);
  const share = imageShare(view, state.token, li, h);
  const initial = state.token === 0 && state.layer === A.initial.layer && h === A.initial.head;
  view.caption.textContent =
    'Shown: layer ' +
    state.layer +
    ', ' +
    (h === 0 ? 'mean of heads' : 'head ' + (h - 1)) +
    ' · ' +
    pct(share) +
    ' of its attention on the visual tokens' +
    (initial ? ' · the view the page opens on: the layer whose heads put the largest share of attention on the pictures' : '');
  const fresh = legend(top, '%', true);
  view.legendSlot.replaceWith(fresh);
  view.legendSlot = fresh;
  let offset = 0;
  D.panels.forEach((p, pk) => {
    const { picture, overlay, mass } = view.panels[pk];
    const pg = picture.getContext('2d')!;
    pg.drawImage(view.pictures[p.picture], 0, 0, picture.width, picture.height);
    if (p.kind === 'tiles' && p.tiles.length > 1) {
      // Tile borders: a light line over a dark one, visible on any picture.
      for (const [colour, width] of [
        ['rgba(0,0,0,0.6)', 3],
        ['rgba(255,255,255,0.9)', 1],
      ] as [string, number][]) {
        pg.strokeStyle = colour;
        pg.lineWidth = width;
        for (const tile of p.tiles) {
          const [x0, y0, x1, y1] = tile.rect;
          pg.strokeRect(x0 * picture.width, y0 * picture.height, (x1 - x0) * picture.width, (y1 - y0) * picture.height);
        }
      }
    }
    const g = overlay.getContext('2d')!;
    g.clearRect(0, 0, overlay.width, overlay.height);
    for (const tile of p.tiles) {
      const small = document.createElement('canvas');
      small.width = small.height = A.g;
      const sg = small.getContext('2d')!;
      const img = sg.createImageData(A.g, A.g);
      for (let i = 0; i < A.g * A.g; i++) {
        const v = (map[offset + i] / 255) * scales[k];
        img.data.set(overlayColour(top > 0 ? v / top : 0, state.opacity * (state.shared ? 1 : share)), i * 4);
      }
      offset += A.g * A.g;
      sg.putImageData(img, 0, 0);
      const [x0, y0, x1, y1] = tile.rect;
      g.imageSmoothingEnabled = state.smooth;
      g.drawImage(small, x0 * overlay.width, y0 * overlay.height, (x1 - x0) * overlay.width, (y1 - y0) * overlay.height);
    }
    mass.textContent = pct(D.frameMass[state.token][li][h][pk]);
  });
  const chart = view.bars;
  if (chart) {
    const masses = D.frameMass[state.token][li][h];
    masses.forEach((m, f) => {
      view.frameCells[f].textContent = pct(m);
      view.frameCells[f].dataset.value = String(m);
    });
    const g = chart.getContext('2d')!;
    g.clearRect(0, 0, chart.width, chart.height);
    const peak = Math.max(...masses, 1e-12);
    const left = 40;
    const bottom = chart.height - 16;
    const plot = bottom - 14;
    const w = (chart.width - left) / masses.length;
    g.font = '10px sans-serif';
    g.fillStyle = '#333';
    g.strokeStyle = '#999';
    g.beginPath();
    g.moveTo(left, 4);
    g.lineTo(left, bottom);
    g.lineTo(chart.width, bottom);
    g.stroke();
    for (const f of [0, 0.5, 1]) g.fillText(pct(peak * f), 0, bottom - plot * f + 3);
    masses.forEach((m, f) => {
      const hgt = plot * (m / peak);
      g.fillStyle = '#c0392b';
      g.fillRect(left + f * w + 3, bottom - hgt, w - 6, hgt);
      g.fillStyle = '#333';
      if (m >= peak / 50) g.fillText(pct(m), left + f * w + 2, bottom - hgt - 3);
      g.fillText(String(f + 1), left + f * w + w / 2 - 3, chart.height - 3);
    });
  }
}

/** Attention to the prompt: for the chosen token and head, each group of positions (prompt order) by layer. */
function textSection(view: AttentionView): HTMLElement {
  const { D, state } = view;
  const T = D.text;
  const A = D.attention;
  const sec = el('section', { id: 'text' }, el('h2', {}, 'Attention to the prompt: the question, the pictures, the first token'));
  const headsKept = T.values[0]?.[0]?.length ?? 1;
  sec.append(
    el(
      'div',
      { class: 'muted' },
      "The chosen token's attention row (token, head: as above" +
        (headsKept === 1 ? '; mean of heads only' : '') +
        ') summed over groups of positions: each picture (all its visual tokens), the system prompt, each other token alone, and the tokens generated before it. Columns: LLM layers.',
    ),
  );
  const table = el('table', { class: 'text-attention', id: 'text-attention' });
  table.append(el('tr', {}, el('th', { class: 'name' }, 'positions'), el('th', {}, 'tokens'), ...A.layers.map((l) => el('th', {}, 'layer ' + l))));
  const cells = T.groups.map((grp) => {
    const label = grp.kind === 'image' || grp.kind === 'system' ? el('span', { class: 'group ' + grp.kind }, grp.label) : tokenEl(grp.label);
    const tds = A.layers.map(() => el('td'));
    table.append(
      el('tr', { class: grp.kind }, el('td', { class: 'name' }, label, grp.kind === 'first' ? ' (first token)' : ''), el('td', {}, grp.count), ...tds),
    );
    return tds;
  });
  sec.append(el('div', { class: 'scroll' }, table));
  view.redraws.push(() => {
    const h = Math.min(state.head, headsKept - 1);
    cells.forEach((tds, gi) =>
      tds.forEach((td, li) => {
        const v = T.values[state.token][li][h][gi];
        td.textContent = v === undefined ? '' : pct(v);
        td.style.background = v === undefined ? '' : 'rgba(192, 57, 43, ' + Math.min(1, v).toFixed(3) + ')';
        td.style.color = v !== undefined && v > 0.5 ? '#fff' : '';
      }),
    );
  });
  return sec;
}

/** Temporal attention (PVC): frames x frames per ViT layer, frame numbers on both axes; null for a model without it. */
function temporalSection(D: ReportData): HTMLElement | null {
  if (D.temporal.length === 0) {
    if (!D.model.pvc) return null;
    return el(
      'section',
      {},
      el('h2', {}, 'Temporal attention across frames (PVC)'),
      el('div', { class: 'muted' }, 'no temporal attention recorded: inspect with taps vision.layers.*.temporal.probs'),
    );
  }
  const T = { layer: 0, head: 0 };
  const sec = el('section', { id: 'temporal-section' }, el('h2', {}, 'Temporal attention across frames (PVC)'));
  const first = D.temporal[0];
  const canvas = el('canvas', { width: 300, height: 300, id: 'temporal' });
  let tLegend = el('span');
  const info = el('div', { class: 'muted' });
  sec.append(
    el(
      'div',
      { class: 'controls' },
      choice(
        'ViT layer ',
        'temporal-layer',
        D.temporal.map((t, i) => [i, String(t.layer)]),
        0,
        (v) => {
          T.layer = v;
          drawTemporal();
        },
      ),
      choice('head ', 'temporal-head', headOptions(first.heads), 0, (v) => {
        T.head = v;
        drawTemporal();
      }),
      tLegend,
    ),
    info,
    canvas,
  );
  const drawTemporal = () => {
    const t = D.temporal[T.layer];
    const m = t.maps[T.head];
    const F = t.frames;
    const max = Math.max(...m, 1e-12);
    info.textContent =
      'row: the attending frame, column: the frame attended to (causal: a frame sees itself and the ones before); mean over ' +
      t.sequences +
      ' sequence(s) of ' +
      F +
      ' frames and ' +
      t.tokens +
      ' tokens per frame' +
      (D.model.dataFlag === 3
        ? ''
        : '. For an image PVC repeats each tile ' + F + ' times as a static video: the "frames" here are those repeats of one tile.');
    const g = canvas.getContext('2d')!;
    g.clearRect(0, 0, canvas.width, canvas.height);
    const margin = 28;
    const s = (canvas.width - margin) / F;
    g.font = '10px sans-serif';
    g.fillStyle = '#333';
    g.fillText('attended to →', margin, 10);
    for (let i = 0; i < F; i++) {
      g.fillStyle = '#333';
      g.fillText(String(i + 1), margin + i * s + s / 2 - 3, 22);
      g.fillText(String(i + 1), 4, margin + i * s + s / 2 + 3);
      for (let j = 0; j < F; j++) {
        const [r, gg, b] = heat(m[i * F + j] / max);
        g.fillStyle = 'rgb(' + r + ',' + gg + ',' + b + ')';
        g.fillRect(margin + j * s, margin + i * s, Math.ceil(s), Math.ceil(s));
      }
    }
    const fresh = legend(max, 'probability', false);
    tLegend.replaceWith(fresh);
    tLegend = fresh;
  };
  drawTemporal();
  return sec;
}

/** Logit lens: each row's (embeddings, layer) top token at each position, the next token's probability and rank; a click shows the top tokens. */
function lensSection(D: ReportData): HTMLElement {
  const lensSec = el('section', { id: 'lens' }, el('h2', {}, 'Logit lens'));
  if (D.lens.layers.length === 0) {
    lensSec.append(el('div', { class: 'muted' }, 'no layer states recorded: inspect with taps llm.layers.*.out (and llm.embeds for the embeddings row)'));
    return lensSec;
  }
  const k = D.lens.columns[0]?.cells[0]?.top.length ?? 0;
  const detail = el('div', { id: 'lens-detail', class: 'readout' }, 'click a cell for its top ' + k + ' tokens');
  const table = el('table', { class: 'lens', id: 'lens-table' });
  let part = D.lens.columns.some((c) => c.part === 'prompt') ? 1 : 0;
  const build = () => {
    table.textContent = '';
    const columns = D.lens.columns.filter((c) => part === 0 || c.part !== 'prompt');
    table.append(el('tr', {}, el('th', { class: 'name' }, 'position'), ...columns.map((c) => el('th', {}, c.label))));
    table.append(el('tr', {}, el('th', { class: 'name' }, 'input token'), ...columns.map((c) => el('td', {}, tokenEl(c.input)))));
    table.append(el('tr', {}, el('th', { class: 'name' }, 'next token'), ...columns.map((c) => el('td', {}, c.next === null ? '' : tokenEl(c.next)))));
    for (let r = D.lens.layers.length - 1; r >= 0; r--) {
      const layer = D.lens.layers[r];
      table.append(
        el(
          'tr',
          {},
          el('th', { class: 'name' }, layer < 0 ? 'embeddings' : 'layer ' + layer),
          ...columns.map((c) => {
            const cell = c.cells[r];
            const [tok, p] = cell.top[0];
            const name = (i: number) => D.lens.tokens[i];
            const hit = cell.next !== null && cell.next[1] === 1;
            const td = el(
              'td',
              {
                class: hit ? 'hit' : '',
                onclick: () => {
                  detail.textContent = '';
                  detail.append(
                    el('b', {}, c.label + ', ' + (layer < 0 ? 'embeddings' : 'layer ' + layer) + ': '),
                    ...cell.top.flatMap(([t, q], i) => [i ? ' · ' : '', tokenEl(name(t)), ' ' + pct(q)]),
                  );
                },
              },
              tokenEl(name(tok)),
              ' ' + pct(p),
              cell.next ? el('div', { class: 'next' }, 'next ' + pct(cell.next[0]) + ' #' + cell.next[1]) : null,
            );
            td.style.background = 'rgba(52, 120, 246, ' + (0.6 * p).toFixed(3) + ')';
            return td;
          }),
        ),
      );
    }
  };
  build();
  lensSec.append(
    el(
      'div',
      { class: 'muted' },
      "Each row's state (the embeddings, then each layer's output) through the final norm and output head: the top token and its probability; below it the probability and rank of the token that actually came next (outlined where it is the top one).",
    ),
    el(
      'div',
      { class: 'controls' },
      choice(
        'positions ',
        'lens-positions',
        [
          [1, 'all prompt text positions shown (' + D.lens.columns.filter((c) => c.part !== 'generated').length + ')'],
          [0, "the question's and the answer's"],
        ],
        part,
        (v) => {
          part = v;
          build();
        },
      ),
    ),
    el('div', { class: 'scroll' }, table),
    detail,
  );
  return lensSec;
}

/** Statistics of every tap. */
function statsSection(D: ReportData): HTMLElement {
  const statSec = el('section', { id: 'stats-section' }, el('h2', {}, 'Tap statistics (' + D.stats.length + ' taps; generation step k as stepk.NAME)'));
  const st = el(
    'table',
    { id: 'stats' },
    el('tr', {}, ...['name', 'shape', 'mean', 'std', 'min', 'max'].map((h, i) => el('th', { class: i === 0 ? 'name' : '' }, h))),
  );
  for (const [name, shape, ...v] of D.stats)
    st.append(el('tr', {}, el('td', { class: 'name' }, name), el('td', {}, '[' + shape.join(', ') + ']'), ...v.map((x) => el('td', {}, fmt(x)))));
  statSec.append(el('div', { class: 'scroll' }, st));
  return statSec;
}

/** The page's functions, reportPage first: report_page.ts inlines their source. */
export const PAGE_FUNCTIONS: readonly ((...args: never[]) => unknown)[] = [
  reportPage,
  el,
  fmt,
  pct,
  tokenLabel,
  tokenEl,
  heat,
  overlayColour,
  choice,
  headOptions,
  legend,
  summarySection,
  mapIndex,
  imageShare,
  scaleTop,
  sharpest,
  attentionSection,
  attentionControls,
  overviewGrid,
  drawOverview,
  attentionPanels,
  promptPosition,
  readCell,
  frameBars,
  drawAttention,
  textSection,
  temporalSection,
  lensSection,
  statsSection,
];
