// GET /metrics: the server's counters in Prometheus' text format (prom-client), named as vLLM names
// them where the meaning is the same (vllm:num_requests_running -> pvc:num_requests_running, ...), so
// dashboards and alerts written for vLLM read them with the prefix changed.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { FeatureCache } from './features';
import { GenerationQueue } from './queue';

// vLLM's buckets (seconds).
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export class ServerMetrics {
  readonly registry = new Registry();
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly requestSuccess: Counter<'finished_reason'>;
  readonly timeToFirstToken: Histogram;
  readonly e2eLatency: Histogram;
  readonly queueTime: Histogram;
  readonly featureCacheHits: Counter;
  readonly featureCacheMisses: Counter;

  constructor(queue: GenerationQueue, features: FeatureCache, batched: () => number) {
    const registers = [this.registry];
    new Gauge({
      name: 'pvc:num_requests_running',
      help: 'Requests admitted to the model (media, vision, prefill or decode).',
      registers,
      collect() {
        this.set(queue.depth.running);
      },
    });
    new Gauge({
      name: 'pvc:num_requests_waiting',
      help: 'Requests waiting for a slot (--max-queue bounds them).',
      registers,
      collect() {
        this.set(queue.depth.waiting);
      },
    });
    new Gauge({
      name: 'pvc:num_requests_decoding',
      help: 'Rows in the continuous batch (prefill or decode).',
      registers,
      collect() {
        this.set(batched());
      },
    });
    new Gauge({
      name: 'pvc:feature_cache_bytes',
      help: 'Bytes of visual tokens held by the vision-feature cache.',
      registers,
      collect() {
        this.set(features.bytes);
      },
    });
    new Gauge({
      name: 'pvc:feature_cache_entries',
      help: 'Media parts held by the vision-feature cache.',
      registers,
      collect() {
        this.set(features.size);
      },
    });
    this.promptTokens = new Counter({ name: 'pvc:prompt_tokens_total', help: 'Prompt tokens of the requests answered (visual tokens included).', registers });
    this.generationTokens = new Counter({ name: 'pvc:generation_tokens_total', help: 'Tokens generated.', registers });
    this.requestSuccess = new Counter({
      name: 'pvc:request_success_total',
      help: 'Requests answered to their end, by finish reason (stop, length).',
      labelNames: ['finished_reason'],
      registers,
    });
    this.timeToFirstToken = new Histogram({
      name: 'pvc:time_to_first_token_seconds',
      help: 'From the request received to its first token.',
      buckets: TTFT_BUCKETS,
      registers,
    });
    this.e2eLatency = new Histogram({
      name: 'pvc:e2e_request_latency_seconds',
      help: 'From the request received to its last token.',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.queueTime = new Histogram({ name: 'pvc:request_queue_time_seconds', help: 'Time a request waited for a slot.', buckets: LATENCY_BUCKETS, registers });
    this.featureCacheHits = new Counter({ name: 'pvc:feature_cache_hits_total', help: 'Media parts whose visual tokens came from the cache.', registers });
    this.featureCacheMisses = new Counter({ name: 'pvc:feature_cache_misses_total', help: 'Media parts encoded by the vision model.', registers });
  }
}
