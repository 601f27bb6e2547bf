// The chat page: keeps the conversation, streams each reply from /v1/chat/completions (SSE), shows
// tokens/s from the server's timings. No framework and no build step; everything is served by llamapy.
"use strict";

const $ = (id) => document.getElementById(id);
const store = window.localStorage;
const state = { messages: [], controller: null };

function load() {
  try { state.messages = JSON.parse(store.getItem("llamapy.messages") || "[]"); } catch { state.messages = []; }
  for (const [id, key] of [["api-key", "apiKey"], ["system", "system"], ["temperature", "temperature"],
                           ["max-tokens", "maxTokens"]]) {
    const saved = store.getItem("llamapy." + key);
    if (saved !== null) $(id).value = saved;
    $(id).addEventListener("change", () => store.setItem("llamapy." + key, $(id).value));
  }
  for (const m of state.messages) addBubble(m.role, m.content, m.stats || "", true);
}

function save() { store.setItem("llamapy.messages", JSON.stringify(state.messages)); }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

function addBubble(role, text, stats, done) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.dataset.done = done ? "1" : "0";
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  const info = document.createElement("div");
  info.className = "stats muted";
  info.textContent = stats || "";
  div.append(content, info);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function statsText(timings, tokens, seconds) {
  if (timings) {
    return `${timings.predicted_n} tokens, ${timings.predicted_per_second.toFixed(1)} t/s · prompt ` +
           `${timings.prompt_n} new + ${timings.cache_n} cached tokens, ${timings.prompt_per_second.toFixed(1)} t/s`;
  }
  return seconds > 0 ? `${tokens} chunks, ${(tokens / seconds).toFixed(1)} t/s` : "";
}

async function showModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (r.ok) $("model").textContent = (await r.json()).data[0].id;
  } catch { /* the page still works without the name */ }
}

function requestBody() {
  const msgs = [];
  const system = $("system").value.trim();
  if (system) msgs.push({ role: "system", content: system });
  for (const m of state.messages) msgs.push({ role: m.role, content: m.content });
  const body = { messages: msgs, stream: true, stream_options: { include_usage: true } };
  const temp = parseFloat($("temperature").value);
  if (!Number.isNaN(temp)) body.temperature = temp;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

// Reads `data: {...}` events from a fetch body; calls onEvent with each parsed object.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  notice("");
  state.messages.push({ role: "user", content: text });
  addBubble("user", text, "", true);
  save();
  const bubble = addBubble("assistant", "", "", false);
  const content = bubble.querySelector(".content");
  const info = bubble.querySelector(".stats");
  busy(true);
  const controller = state.controller = new AbortController();
  let reply = "", chunks = 0, first = 0, timings = null, failed = false;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!r.ok) {
      let message = `HTTP ${r.status}`;
      try { message = (await r.json()).error.message; } catch { /* keep the status */ }
      if (r.status === 401) { openSettings(); $("api-key").focus(); message += " (enter the API key in Settings)"; }
      throw new Error(message);
    }
    await readEvents(r, (event) => {
      if (event.error) throw new Error(event.error.message);
      if (event.timings) timings = event.timings;
      const delta = event.choices && event.choices[0] && event.choices[0].delta;
      if (delta && delta.content) {
        if (!first) first = performance.now();
        chunks += 1;
        reply += delta.content;
        content.textContent = reply;
        info.textContent = statsText(null, chunks, (performance.now() - first) / 1000);
        bubble.scrollIntoView({ block: "end" });
      }
    });
  } catch (e) {
    if (e.name !== "AbortError") { notice(e.message); failed = true; }
  } finally {
    state.controller = null;
    busy(false);
  }
  const stats = statsText(timings, chunks, first ? (performance.now() - first) / 1000 : 0);
  info.textContent = stats;
  bubble.dataset.done = "1";
  if (failed && !reply) {
    bubble.remove();
    state.messages.pop();  // the message goes back into the box to send again
    $("input").value = text;
    $("messages").lastChild && $("messages").lastChild.remove();
  } else {
    state.messages.push({ role: "assistant", content: reply, stats });
  }
  save();
}

function busy(on) {
  $("send").disabled = on;
  $("stop").hidden = !on;
}

function openSettings() {
  $("settings").hidden = false;
  $("toggle-settings").setAttribute("aria-expanded", "true");
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.messages = [];
  save();
  $("messages").replaceChildren();
  notice("");
});
$("toggle-settings").addEventListener("click", () => {
  const open = $("settings").hidden;
  $("settings").hidden = !open;
  $("toggle-settings").setAttribute("aria-expanded", String(open));
});
$("api-key").addEventListener("change", showModel);

load();
showModel();
