// The web chat UI: plain ES modules, no build step. Model text is shown as textContent while it streams, then
// replaced by the server's sanitized HTML (the message's `html`) when the final event arrives.
import { Api, ApiError } from "./api.js";

const PAGE = 50;
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

class ChatApp {
  constructor() {
    this.api = new Api();
    this.conversation = null;   // the open conversation
    this.nextBefore = null;     // seq of the oldest message shown, when older ones exist
    this.summary = null;        // where older turns were summarised: {through_seq, created_at, model, content}
    this.loadingOlder = false;
    this.cursor = null;         // the conversation list's next page
    this.streaming = null;      // {controller, conversationId} while an answer streams
    this.searchTimer = null;
    this.opening = 0;           // counts open() calls: a slower, older one must not overwrite a newer one
  }

  async start() {
    this.bind();
    try {
      const session = await this.api.json("GET", "/session");
      this.api.csrf = session.csrf_token;
      await this.enter(session.user);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) this.error(err);
      this.showSignIn();
    }
  }

  bind() {
    $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); this.signIn(); });
    $("sign-out").addEventListener("click", () => this.signOut());
    $("new-chat").addEventListener("click", () => this.newChat());
    $("search").addEventListener("input", () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => this.loadConversations(), 250);
    });
    $("more-conversations").addEventListener("click", () => this.loadConversations(true));
    $("title").addEventListener("change", () => this.rename());
    $("model").addEventListener("change", () => this.patch({ model: $("model").value || null }));
    $("delete").addEventListener("click", () => this.remove());
    $("settings-toggle").addEventListener("click", () => { $("settings").hidden = !$("settings").hidden; });
    $("settings").addEventListener("submit", (e) => { e.preventDefault(); this.saveSettings(); });
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); this.send(); }
    });
    $("stop").addEventListener("click", () => this.stop());
    $("messages").addEventListener("scroll", () => { if ($("messages").scrollTop < 80) this.loadOlder(); });
    $("import-file").addEventListener("change", () => this.importFile());
  }

  error(err) { $("error").textContent = err ? String(err.message || err) : ""; }

  showSignIn() {
    $("app").hidden = true; $("signin").hidden = false; $("username").focus();
    this.offerSso();
  }

  // The single sign-on button when the server offers it, and why the last SSO sign-in failed (?sso_error=code,
  // explained by the server; the code leaves the address bar).
  async offerSso() {
    const failed = new URLSearchParams(location.search).get("sso_error");
    if (failed) history.replaceState(null, "", "/");
    try {
      const sso = await this.api.json("GET", failed ? `/sso?error=${encodeURIComponent(failed)}` : "/sso");
      $("sso").hidden = !sso.enabled;
      if (sso.enabled) { $("sso").textContent = `Sign in with ${sso.label}`; $("sso").href = sso.login_url; }
      if (sso.error) $("signin-error").textContent = sso.error.message;
    } catch (err) { /* the password form still works */ }
  }

  async signIn() {
    $("signin-error").textContent = "";
    try {
      const session = await this.api.json("POST", "/session",
        { username: $("username").value, password: $("password").value });
      this.api.csrf = session.csrf_token;
      $("password").value = "";
      await this.enter(session.user);
    } catch (err) {
      $("signin-error").textContent = err.message;
    }
  }

  async signOut() {
    try { await this.api.call("DELETE", "/session"); } catch (err) { /* signed out anyway */ }
    this.api.csrf = null;
    this.conversation = null;
    this.showSignIn();
  }

  async enter(user) {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").textContent = `Signed in as ${user.name || user.id || ""}`;
    this.updateExports();
    await this.loadModels();
    await this.loadConversations();
    const first = $("conversations").querySelector("li");
    if (first) await this.open(first.dataset.id);
    else this.showConversation(null);
    document.body.dataset.ready = "true";
  }

  async loadModels() {
    const models = await this.api.json("GET", "/models");
    const select = $("model");
    select.replaceChildren(el("option", "", "(default model)"));
    select.firstChild.value = "";
    for (const m of models.data) {
      const option = el("option", "", m.id);
      option.value = m.id;
      select.append(option);
    }
  }

  async loadConversations(more = false) {
    const params = new URLSearchParams({ limit: "50" });
    const q = $("search").value.trim();
    if (q) params.set("q", q);
    if (more && this.cursor) params.set("cursor", this.cursor);
    const page = await this.api.json("GET", `/conversations?${params}`);
    const list = $("conversations");
    if (!more) list.replaceChildren();
    for (const c of page.data) {
      const item = el("li", "", c.title);
      item.dataset.id = c.id;
      item.title = c.title;
      item.addEventListener("click", () => this.open(c.id));
      list.append(item);
    }
    this.cursor = page.next_cursor;
    $("more-conversations").hidden = !page.has_more;
    this.markCurrent();
  }

  markCurrent() {
    for (const li of $("conversations").children) {
      li.classList.toggle("current", !!this.conversation && li.dataset.id === this.conversation.id);
    }
  }

  async newChat() {
    const conv = await this.api.json("POST", "/conversations", {});
    $("search").value = "";
    await this.loadConversations();
    await this.open(conv.id);
    $("input").focus();
  }

  async open(id) {
    this.error(null);
    const ticket = ++this.opening;
    const conv = await this.api.json("GET", `/conversations/${id}`);
    if (ticket !== this.opening) return;
    this.showConversation(conv);
    const page = await this.api.json("GET", `/conversations/${id}/messages?limit=${PAGE}`);
    if (ticket !== this.opening) return;
    const box = $("messages");
    box.replaceChildren(...page.data.map((m) => this.messageNode(m)));
    this.nextBefore = page.next_before;
    this.showSummary(page.summary || null);
    this.refreshActions();
    box.scrollTop = box.scrollHeight;
    this.fillView();
  }

  fillView() {  // a page that does not fill the view leaves nothing to scroll: load older at once
    const box = $("messages");
    if (this.nextBefore !== null && box.scrollHeight <= box.clientHeight) this.loadOlder();
  }

  showConversation(conv) {
    this.conversation = conv;
    this.markCurrent();
    this.updateExports();
    const none = conv === null;
    for (const id of ["title", "model", "settings-toggle", "delete", "input", "send"]) $(id).disabled = none;
    if (none) { $("title").value = ""; $("messages").replaceChildren(); return; }
    $("title").value = conv.title;
    $("model").value = conv.model || "";
    $("system-prompt").value = conv.system_prompt || "";
    const p = conv.params || {};
    $("temperature").value = p.temperature ?? "";
    $("top-p").value = p.top_p ?? "";
    $("repetition-penalty").value = p.repetition_penalty ?? "";
    $("max-tokens").value = p.max_tokens ?? "";
    $("settings-saved").textContent = "";
  }

  updateExports() {
    for (const a of document.querySelectorAll("a.export")) {
      const params = new URLSearchParams({ format: a.dataset.format });
      if (a.dataset.scope === "one") {
        if (!this.conversation) { a.removeAttribute("href"); continue; }
        params.set("conversation", this.conversation.id);
      }
      a.href = `/api/chat/export?${params}`;
    }
  }

  async patch(fields) {
    if (!this.conversation) return null;
    try {
      const conv = await this.api.json("PATCH", `/conversations/${this.conversation.id}`, fields);
      this.conversation = conv;
      return conv;
    } catch (err) { this.error(err); return null; }
  }

  async rename() {
    const conv = await this.patch({ title: $("title").value });
    if (conv) { $("title").value = conv.title; await this.loadConversations(); }
  }

  async remove() {
    if (!this.conversation || !window.confirm(`Delete "${this.conversation.title}"?`)) return;
    await this.api.call("DELETE", `/conversations/${this.conversation.id}`);
    this.conversation = null;
    await this.loadConversations();
    const first = $("conversations").querySelector("li");
    if (first) await this.open(first.dataset.id); else this.showConversation(null);
  }

  async saveSettings() {
    const number = (id, int) => {
      const v = $(id).value.trim();
      return v === "" ? undefined : (int ? parseInt(v, 10) : parseFloat(v));
    };
    const params = {};
    const values = { temperature: number("temperature"), top_p: number("top-p"),
      repetition_penalty: number("repetition-penalty"), max_tokens: number("max-tokens", true) };
    for (const [k, v] of Object.entries(values)) if (v !== undefined && !Number.isNaN(v)) params[k] = v;
    const conv = await this.patch({ system_prompt: $("system-prompt").value || null, params });
    if (conv) $("settings-saved").textContent = "Saved";
  }

  // -- messages --------------------------------------------------------------------------------------------
  messageNode(m) {
    const node = el("div", `msg ${m.role} ${m.status || ""}`);
    if (m.id) node.dataset.id = m.id;
    if (m.seq !== undefined) node.dataset.seq = String(m.seq);
    const meta = el("div", "meta");
    meta.append(el("span", "role", m.role === "assistant" ? (m.model || "assistant") : "you"));
    if (m.status && m.status !== "complete") meta.append(el("span", "status", m.status));
    node.append(meta);
    const body = el("div", "body");
    if (typeof m.html === "string") body.innerHTML = m.html;  // sanitized by the server (nh3)
    else { body.classList.add("streaming"); body.textContent = m.content || ""; }
    node.append(body);
    return node;
  }

  // A divider after the last message the summary covers: the model sees the messages above it only as the summary.
  showSummary(summary) {
    this.summary = summary;
    const box = $("messages");
    for (const old of box.querySelectorAll(".summary-divider")) old.remove();
    if (!summary) return;
    const last = box.querySelector(`.msg[data-seq="${summary.through_seq}"]`);
    if (!last || !last.nextElementSibling) return;  // not loaded (an older page), or nothing after it yet
    const divider = el("div", "summary-divider");
    divider.setAttribute("role", "separator");
    const when = new Date(summary.created_at * 1000).toLocaleString();
    divider.title = `Summarised by ${summary.model}, ${when}`;
    const details = el("details");
    details.append(el("summary", null, "Earlier messages summarised"), el("p", "summary-text", summary.content));
    divider.append(details);
    last.after(divider);
  }

  refreshActions() {
    const box = $("messages");
    for (const b of box.querySelectorAll(".meta button")) b.remove();
    if (this.streaming) return;
    for (const node of box.querySelectorAll(".msg.user[data-id]")) {
      const edit = el("button", "edit", "Edit");
      edit.type = "button";
      edit.addEventListener("click", () => this.beginEdit(node));
      node.querySelector(".meta").append(edit);
    }
    const last = box.lastElementChild;
    if (last && last.classList.contains("assistant")) {
      const again = el("button", "regenerate", "Regenerate");
      again.type = "button";
      again.addEventListener("click", () => this.regenerate());
      last.querySelector(".meta").append(again);
    }
  }

  async loadOlder() {
    if (this.loadingOlder || this.nextBefore === null || !this.conversation) return;
    this.loadingOlder = true;
    const box = $("messages");
    const note = el("div", "loading-older", "Loading older messages…");
    box.prepend(note);
    try {
      const id = this.conversation.id;
      const page = await this.api.json("GET", `/conversations/${id}/messages?before=${this.nextBefore}&limit=${PAGE}`);
      if (!this.conversation || this.conversation.id !== id) return;
      const height = box.scrollHeight;
      note.remove();
      box.prepend(...page.data.map((m) => this.messageNode(m)));
      this.showSummary(this.summary);
      box.scrollTop += box.scrollHeight - height + note.offsetHeight;  // keep what the reader was looking at
      this.nextBefore = page.next_before;
      this.refreshActions();
    } catch (err) {
      this.error(err);
    } finally {
      note.remove();
      this.loadingOlder = false;
    }
    this.fillView();
  }

  setStreaming(on) {
    $("send").disabled = on || !this.conversation;
    $("stop").disabled = !on;
    this.refreshActions();
  }

  // Stream an answer into a new assistant node; `replace` swaps nodes for the stored messages at the end.
  async answer(path, body, placeholders) {
    if (this.streaming) return;
    this.error(null);
    const box = $("messages");
    const conversationId = this.conversation.id;
    const pending = this.messageNode({ role: "assistant", model: $("model").value || "", content: "" });
    pending.classList.add("pending");
    box.append(pending);
    box.scrollTop = box.scrollHeight;
    const text = pending.querySelector(".body");
    const controller = new AbortController();
    this.streaming = { controller, conversationId };
    this.setStreaming(true);
    try {
      const { final, error } = await this.api.stream(path, body, (piece) => {
        text.textContent += piece;  // plain text while streaming: never HTML from the model
        if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
      }, controller.signal);
      if (error) this.error(error.message || "The answer failed.");
      if (final && final.messages && this.conversation && this.conversation.id === conversationId) {
        const nodes = final.messages.map((m) => this.messageNode(m));
        const answerNode = nodes.pop();
        placeholders.forEach((p, i) => { if (nodes[i]) p.replaceWith(nodes[i]); });
        pending.replaceWith(answerNode);
        if (final.summary) this.showSummary(final.summary);
      } else if (!final) {
        pending.classList.add("stopped");
      }
    } catch (err) {
      if (err.name === "AbortError") pending.classList.add("stopped"); else { pending.remove(); this.error(err); }
    } finally {
      this.streaming = null;
      this.setStreaming(false);
      box.scrollTop = box.scrollHeight;
      this.refreshTitle(conversationId).catch(() => {});
      this.loadConversations().catch(() => {});
    }
  }

  async refreshTitle(id) {  // the first question names a new chat
    const conv = await this.api.json("GET", `/conversations/${id}`);
    if (this.conversation && this.conversation.id === id && document.activeElement !== $("title")) {
      this.conversation = conv;
      $("title").value = conv.title;
    }
  }

  async send() {
    const content = $("input").value;
    if (!content.trim() || !this.conversation || this.streaming) return;
    $("input").value = "";
    const question = this.messageNode({ role: "user", content });
    $("messages").append(question);
    await this.answer(`/conversations/${this.conversation.id}/messages`, { content }, [question]);
  }

  async regenerate() {
    const last = $("messages").lastElementChild;
    if (!last || !last.classList.contains("assistant")) return;
    last.remove();
    await this.answer(`/conversations/${this.conversation.id}/regenerate`, {}, []);
  }

  beginEdit(node) {
    if (this.streaming) return;
    const body = node.querySelector(".body");
    const area = el("textarea");
    area.rows = 3;
    area.className = "edit-text";
    area.value = body.textContent.trim();
    const save = el("button", "edit-send", "Send");
    save.type = "button";
    const cancel = el("button", "quiet", "Cancel");
    cancel.type = "button";
    const form = el("div", "edit-form");
    form.append(area, save, cancel);
    body.hidden = true;
    node.append(form);
    area.focus();
    cancel.addEventListener("click", () => { form.remove(); body.hidden = false; });
    save.addEventListener("click", async () => {
      const content = area.value;
      if (!content.trim()) return;
      while (node.nextElementSibling) node.nextElementSibling.remove();
      if (this.summary && this.summary.through_seq >= Number(node.dataset.seq)) this.showSummary(null);  // dropped
      form.remove();
      body.hidden = false;
      body.classList.add("streaming");
      body.textContent = content;
      await this.answer(`/conversations/${this.conversation.id}/messages/${node.dataset.id}/edit`, { content }, [node]);
    });
  }

  async stop() {
    const running = this.streaming;
    if (!running) return;
    $("stop").disabled = true;
    try {
      const result = await this.api.json("POST", `/conversations/${running.conversationId}/stop`);
      if (!result.stopped) running.controller.abort();  // another gateway process runs it: close the stream
    } catch (err) {
      running.controller.abort();
    }
  }

  async importFile() {
    const input = $("import-file");
    const file = input.files && input.files[0];
    if (!file) return;
    try {
      const result = await this.api.json("POST", "/import", await file.text());
      $("import-result").textContent =
        `Imported ${result.conversations.length} conversation(s), ${result.messages} message(s).`;
      await this.loadConversations();
    } catch (err) {
      $("import-result").textContent = `Import failed: ${err.message}`;
    } finally {
      input.value = "";
    }
  }
}

new ChatApp().start();
