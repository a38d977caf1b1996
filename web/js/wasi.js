// wasi.js - the small WASI (preview1) shim the essaim core needs, for the browser and Node.
//
// The core is a wasm32-wasi reactor built by clang with wasi-libc. It does no I/O of its
// own: what libc asks of the host is printing (fd_write to stdout/stderr), the clock, random
// bytes, args/environ (empty) and exit. Everything else answers ENOSYS/EBADF.
//
// Node's own node:wasi keeps a stale view of memory once the module grows it; this shim
// re-reads `memory.buffer` on every call, so it stays right after memory.grow.
//
// Use:
//   const wasi = new Wasi({ stdout: s => ..., stderr: s => ... });
//   const { instance } = await WebAssembly.instantiate(bytes, { wasi_snapshot_preview1: wasi.imports });
//   wasi.start(instance);            // binds memory, calls _initialize

const ESUCCESS = 0, EBADF = 8, EINVAL = 28, ENOSYS = 52;

export class WasiExit extends Error {
  constructor(code) { super(`wasm called exit(${code})`); this.code = code; }
}

export class Wasi {
  constructor({ stdout = null, stderr = null } = {}) {
    this.memory = null;
    this.out = { 1: stdout ?? (s => console.log(s)), 2: stderr ?? (s => console.error(s)) };
    this.pending = { 1: '', 2: '' };
    this.decoder = new TextDecoder();
    const self = this;
    const view = () => new DataView(self.memory.buffer);
    const bytes = () => new Uint8Array(self.memory.buffer);
    this.imports = {
      fd_write(fd, iovs, iovs_len, nwritten) {
        if (fd !== 1 && fd !== 2) return EBADF;
        const dv = view(), mem = bytes();
        let total = 0, text = '';
        for (let i = 0; i < iovs_len; i++) {
          const ptr = dv.getUint32(iovs + 8 * i, true), len = dv.getUint32(iovs + 8 * i + 4, true);
          text += self.decoder.decode(mem.subarray(ptr, ptr + len), { stream: true });
          total += len;
        }
        self.emit(fd, text);
        dv.setUint32(nwritten, total, true);
        return ESUCCESS;
      },
      fd_close() { return ESUCCESS; },
      fd_seek() { return ESUCCESS; },
      fd_read() { return EBADF; },
      fd_fdstat_get(fd, stat) {
        if (fd > 2) return EBADF;
        const dv = view();
        dv.setUint8(stat, 2);              // character device
        dv.setUint16(stat + 2, 0, true);   // flags
        dv.setBigUint64(stat + 8, 0n, true);
        dv.setBigUint64(stat + 16, 0n, true);
        return ESUCCESS;
      },
      fd_fdstat_set_flags() { return ENOSYS; },
      fd_prestat_get() { return EBADF; },  // no preopened directories: the core has no files
      fd_prestat_dir_name() { return EINVAL; },
      path_open() { return ENOSYS; },
      args_sizes_get(argc, bufsz) { const dv = view(); dv.setUint32(argc, 0, true); dv.setUint32(bufsz, 0, true); return ESUCCESS; },
      args_get() { return ESUCCESS; },
      environ_sizes_get(cnt, bufsz) { const dv = view(); dv.setUint32(cnt, 0, true); dv.setUint32(bufsz, 0, true); return ESUCCESS; },
      environ_get() { return ESUCCESS; },
      clock_time_get(id, precision, out) {
        const ns = id === 0 ? BigInt(Date.now()) * 1000000n
                            : BigInt(Math.round(performance.now() * 1e6));
        view().setBigUint64(out, ns, true);
        return ESUCCESS;
      },
      clock_res_get(id, out) { view().setBigUint64(out, 1000n, true); return ESUCCESS; },
      random_get(buf, len) {
        crypto.getRandomValues(bytes().subarray(buf, buf + len));
        return ESUCCESS;
      },
      sched_yield() { return ESUCCESS; },
      poll_oneoff() { return ENOSYS; },
      proc_exit(code) { throw new WasiExit(code); },
    };
  }

  emit(fd, text) {
    const buf = this.pending[fd] + text;
    const nl = buf.lastIndexOf('\n');
    if (nl < 0) { this.pending[fd] = buf; return; }
    this.pending[fd] = buf.slice(nl + 1);
    this.out[fd](buf.slice(0, nl));
  }

  // Binds the instance's memory and runs the reactor's initializer (static constructors).
  start(instance) {
    this.memory = instance.exports.memory;
    if (instance.exports._initialize) instance.exports._initialize();
    return instance;
  }
}

// Loads and starts the core from bytes (an ArrayBuffer or Uint8Array).
export async function loadCore(bytes, opts = {}) {
  const wasi = new Wasi(opts);
  const { instance } = await WebAssembly.instantiate(bytes, { wasi_snapshot_preview1: wasi.imports });
  wasi.start(instance);
  return { instance, exports: instance.exports, memory: instance.exports.memory, wasi };
}
