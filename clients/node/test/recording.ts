// A client interceptor that records every request sent to the real sidecar, so a test can see
// what went on the wire (the sidecar may not echo every field back).
import * as grpc from '@grpc/grpc-js';

export class Wire {
  /** (method name, request), in the order they were sent. */
  readonly calls: [string, Record<string, unknown>][] = [];

  readonly interceptor: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      sendMessage: (message, next) => {
        const method = options.method_definition.path.split('/').pop() ?? '';
        this.calls.push([method, message as Record<string, unknown>]);
        next(message);
      },
    });

  methods(): string[] {
    return this.calls.map(([m]) => m);
  }

  requests(method: string): Record<string, unknown>[] {
    return this.calls.filter(([m]) => m === method).map(([, r]) => r);
  }
}
