// The chat API (/api/chat/...): JSON calls with the session's CSRF token, and answers read as server-sent events.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Api {
  constructor() { this.csrf = null; }

  headers(method, json) {
    const h = {};
    if (json) h["content-type"] = "application/json";
    if (method !== "GET" && this.csrf) h["x-csrf-token"] = this.csrf;
    return h;
  }

  async call(method, path, body, signal) {
    const init = { method, headers: this.headers(method, body !== undefined), credentials: "same-origin", signal };
    if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
    const resp = await fetch(`/api/chat${path}`, init);
    if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
    return resp;
  }

  async json(method, path, body) { return (await this.call(method, path, body)).json(); }

  // POST an answer-producing request; onChunk(text) for each streamed piece of text; resolves with the final
  // event ({object: "chat.answer", ...}) and the error event sent before it, if any.
  async stream(path, body, onChunk, signal) {
    const resp = await this.call("POST", path, body, signal);
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", final = null, error = null;
    const handle = (block) => {
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data || data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.object === "chat.completion.chunk") {
        const text = event.choices && event.choices[0] && event.choices[0].delta && event.choices[0].delta.content;
        if (text) onChunk(text);
      } else if (event.object === "chat.answer") {
        final = event;
      } else if (event.error) {
        error = event.error;
      }
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handle(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
    if (buffer.trim()) handle(buffer);
    return { final, error };
  }
}
