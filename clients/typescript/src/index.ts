// A small wrapper over the generated client: auth metadata and page iteration.
// Everything else is the generated code in ./gen (regenerated from proto/ by
// scripts/gen-clients; never edited by hand).
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  WebhookService,
  ListWebhookLogsRequestSchema,
  type WebhookLog,
} from "./gen/hookpost/v1/webhook_service_pb.js";

export * from "./gen/hookpost/v1/webhook_service_pb.js";

export type HookpostClient = Client<typeof WebhookService>;

/** A gRPC client for `address` (e.g. http://127.0.0.1:50051) sending `key` as a bearer token. */
export function connect(address: string, key: string): HookpostClient {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
  return createClient(WebhookService, createGrpcTransport({ baseUrl: address, interceptors: [auth] }));
}

/**
 * The same client over gRPC-Web (HTTP/1.1), the protocol browsers speak; hookpost
 * serves it on the same port. In a browser, use `createGrpcWebTransport` from
 * `@connectrpc/connect-web` the same way (and start hookpost with
 * `--cors-allow-origin` for a page on another origin).
 */
export function connectWeb(address: string, key: string): HookpostClient {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
  return createClient(
    WebhookService,
    createGrpcWebTransport({ baseUrl: address, httpVersion: "1.1", interceptors: [auth] }),
  );
}

/** Every log matching `request`, following next_page_token until the last page. */
export async function* allLogs(
  client: HookpostClient,
  request: MessageInitShape<typeof ListWebhookLogsRequestSchema>,
): AsyncGenerator<WebhookLog> {
  let pageToken = "";
  do {
    const page = await client.listWebhookLogs({ ...request, pageToken });
    yield* page.logs;
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
}
