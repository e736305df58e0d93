// A TCP proxy the tests can cut, to drop a client's streams without touching the sidecar.
import net from 'node:net';

export class CuttableProxy {
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  #refusing = false;
  /** Connections accepted (and passed through) so far. */
  connections = 0;

  private constructor(server: net.Server) {
    this.#server = server;
  }

  static async start(target: string): Promise<CuttableProxy> {
    const [host, portText] = [target.slice(0, target.lastIndexOf(':')), target.slice(target.lastIndexOf(':') + 1)];
    const server = net.createServer();
    const proxy = new CuttableProxy(server);
    server.on('connection', (down) => {
      if (proxy.#refusing) {
        down.destroy();
        return;
      }
      proxy.connections += 1;
      const up = net.connect(Number(portText), host);
      for (const s of [down, up]) {
        proxy.#sockets.add(s);
        s.on('close', () => proxy.#sockets.delete(s));
        s.on('error', () => {
          down.destroy();
          up.destroy();
        });
      }
      down.pipe(up);
      up.pipe(down);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get address(): string {
    const a = this.#server.address() as net.AddressInfo;
    return `127.0.0.1:${a.port}`;
  }

  /** Drops every open connection; with `refuse`, also drops new ones until {@link accept}. */
  cut(refuse = false): void {
    this.#refusing = refuse;
    for (const s of this.#sockets) s.destroy();
  }

  accept(): void {
    this.#refusing = false;
  }

  async close(): Promise<void> {
    this.cut(true);
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
