// "Talk to this agent" by text: a chat call through this origin's API.
//
//   POST   /v1/agents/{agent_id}/chats        -> {"call_id", "greeting"}
//   POST   /v1/chats/{call_id}/messages {"text"} -> {"reply", "turn", "ended"}
//   DELETE /v1/chats/{call_id}                -> end the chat
"use strict";

(() => {
  const root = document.getElementById("chat");
  if (!root) return;
  const agentId = root.dataset.agentId;
  const $ = (id) => document.getElementById(id);
  const log = $("chat-log");
  const startBtn = $("chat-start");
  const endBtn = $("chat-end");
  const form = $("chat-form");
  const input = $("chat-input");
  const sendBtn = $("chat-send");
  const errorEl = $("chat-error");
  const callEl = $("chat-call");
  const callLink = $("chat-call-link");
  let callId = null;

  function say(speaker, text) {
    const turn = document.createElement("div");
    turn.className = `turn ${speaker}`;
    turn.dataset.testid = `chat-${speaker}`;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = speaker === "agent" ? "agent" : "you";
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text; // text, never markup
    turn.append(who, body);
    log.append(turn);
    log.scrollTop = log.scrollHeight;
  }

  function showError(err) {
    errorEl.hidden = false;
    errorEl.textContent = err && err.message ? err.message : String(err);
  }

  function setOpen(open) {
    startBtn.disabled = open;
    endBtn.disabled = !open;
    input.disabled = !open;
    sendBtn.disabled = !open;
    root.dataset.state = open ? "open" : "closed";
    if (open) input.focus();
  }

  async function start() {
    errorEl.hidden = true;
    startBtn.disabled = true;
    log.replaceChildren();
    try {
      const chat = await consoleApi("POST", `/v1/agents/${encodeURIComponent(agentId)}/chats`, {});
      callId = chat.call_id;
      callLink.textContent = callId;
      callLink.href = `/calls/${encodeURIComponent(callId)}`;
      callEl.hidden = false;
      if (chat.greeting) say("agent", chat.greeting);
      setOpen(true);
    } catch (err) {
      showError(err);
      setOpen(false);
    }
  }

  async function send(event) {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !callId) return;
    input.value = "";
    say("caller", text);
    sendBtn.disabled = true;
    input.disabled = true;
    try {
      const answer = await consoleApi("POST", `/v1/chats/${encodeURIComponent(callId)}/messages`, { text });
      say("agent", answer.reply || "");
      if (answer.ended) {
        callId = null; // the agent ended the chat
        setOpen(false);
        root.dataset.state = "ended";
      }
    } catch (err) {
      showError(err);
    } finally {
      if (callId) setOpen(true);
    }
  }

  async function end() {
    endBtn.disabled = true;
    try {
      if (callId) await consoleApi("DELETE", `/v1/chats/${encodeURIComponent(callId)}`);
    } catch (err) {
      if (err.status !== 404) showError(err);
    } finally {
      setOpen(false);
      root.dataset.state = "ended";
    }
  }

  startBtn.addEventListener("click", start);
  endBtn.addEventListener("click", end);
  form.addEventListener("submit", send);
})();
