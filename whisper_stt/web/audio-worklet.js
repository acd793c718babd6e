// AudioWorklet: microphone (any sample rate, any channel count) -> mono float32 at 16 kHz.
//
// Runs on the audio thread. Channels are averaged, a windowed-sinc low-pass removes what 16 kHz cannot
// represent, and a fractional-step reader picks the output samples. Every ~100 ms the processor posts
// {samples: Float32Array (16 kHz), rms, peak} to the page, which encodes and sends them.

const TARGET_RATE = 16000;
const TAPS = 48; // filter length: enough attenuation above 8 kHz for speech at 44.1/48 kHz

class Resampler16k extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.inRate = sampleRate; // global in the AudioWorkletGlobalScope
    this.step = this.inRate / TARGET_RATE; // input samples per output sample
    this.chunk = Math.round(TARGET_RATE * (opts.chunkMs || 100) / 1000);
    this.out = new Float32Array(this.chunk);
    this.outLen = 0;
    this.sumSq = 0;
    this.peak = 0;
    this.levelCount = 0;
    // History of filtered input for interpolation, and of raw input for the FIR filter.
    this.hist = new Float32Array(TAPS);
    this.histPos = 0;
    this.prev = 0; // last filtered sample
    this.pos = 0; // fractional read position relative to the current filtered sample index
    this.kernel = this.step > 1 ? Resampler16k.lowpass(TAPS, 0.5 / this.step * 0.92) : null;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.command === "flush") this.flush();
      if (e.data && e.data.command === "stop") { this.flush(); this.running = false; }
    };
  }

  // Windowed-sinc (Blackman) low-pass; cutoff in cycles per input sample.
  static lowpass(n, cutoff) {
    const k = new Float32Array(n);
    const m = n - 1;
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const x = i - m / 2;
      const sinc = x === 0 ? 2 * Math.PI * cutoff : Math.sin(2 * Math.PI * cutoff * x) / x;
      const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / m) + 0.08 * Math.cos((4 * Math.PI * i) / m);
      k[i] = sinc * w;
      sum += k[i];
    }
    for (let i = 0; i < n; i++) k[i] /= sum;
    return k;
  }

  filter(x) {
    if (!this.kernel) return x;
    this.hist[this.histPos] = x;
    this.histPos = (this.histPos + 1) % TAPS;
    let acc = 0;
    let idx = this.histPos;
    for (let i = 0; i < TAPS; i++) {
      acc += this.kernel[i] * this.hist[idx];
      idx = idx + 1 === TAPS ? 0 : idx + 1;
    }
    return acc;
  }

  emit(sample) {
    this.out[this.outLen++] = sample;
    const a = Math.abs(sample);
    this.sumSq += sample * sample;
    if (a > this.peak) this.peak = a;
    this.levelCount++;
    if (this.outLen === this.chunk) this.flush();
  }

  flush() {
    if (this.outLen === 0) return;
    const samples = this.out.slice(0, this.outLen);
    const rms = Math.sqrt(this.sumSq / Math.max(1, this.levelCount));
    this.port.postMessage({ samples, rms, peak: this.peak }, [samples.buffer]);
    this.outLen = 0;
    this.sumSq = 0;
    this.peak = 0;
    this.levelCount = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const frames = input[0].length;
    const channels = input.length;
    for (let f = 0; f < frames; f++) {
      let x = 0;
      for (let c = 0; c < channels; c++) x += input[c][f];
      x /= channels;
      const y = this.filter(x);
      // Output samples lie between prev (position -1) and y (position 0).
      while (this.pos <= 0) {
        const t = this.pos + 1; // 0..1 between prev and y
        this.emit(this.prev + (y - this.prev) * t);
        this.pos += this.step;
      }
      this.pos -= 1;
      this.prev = y;
    }
    return true;
  }
}

registerProcessor("resampler-16k", Resampler16k);
