// The live supervision page: follows one call's live feed (server-sent events, replayed from the call's start) and
// acts through the API with the console session (whisper, approve / deny a held tool call, transfer, end).
// Text from the feed is only ever set as textContent: caller speech and tool arguments are never parsed as HTML.
"use strict";

(function () {
  const root = document.getElementById("live-call");
  if (!root) return;
  const callId = root.dataset.callId;
  const $ = (testid) => root.querySelector(`[data-testid="${testid}"]`);
  const transcript = $("live-transcript");
  const tools = $("tool-calls");
  const seen = new Set(); // event ids already shown (a reconnect resumes after the last id, but be safe)

  function line(speaker, text, extra) {
    const turn = document.createElement("div");
    turn.className = `turn ${speaker}`;
    turn.dataset.testid = `live-turn-${speaker}`;
    turn.setAttribute("data-testid", `live-turn-${speaker}`);
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = speaker + (extra ? ` · ${extra}` : "");
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    turn.append(who, body);
    transcript.append(turn);
    turn.scrollIntoView({ block: "nearest" });
  }

  function sentiment(data) {
    const badge = $("sentiment");
    const value = typeof data.rolling === "number" ? data.rolling : data.compound;
    badge.textContent = `${data.label} (${value.toFixed(2)})`;
    badge.className = `badge ${value <= -0.05 ? "bad" : value >= 0.05 ? "ok" : ""}`;
  }

  function toolCard(id) {
    let card = tools.querySelector(`[data-tool-call-id="${CSS.escape(id)}"]`);
    if (!card) {
      const empty = tools.querySelector("[data-empty]");
      if (empty) empty.remove();
      card = document.createElement("div");
      card.className = "tool-call";
      card.dataset.toolCallId = id;
      card.setAttribute("data-testid", "tool-call");
      card.innerHTML = '<strong data-name></strong> <span class="badge" data-state></span><pre data-args></pre>' +
        '<div data-actions hidden><button type="button" data-approve>Approve</button> ' +
        '<button type="button" class="danger" data-deny>Deny</button></div><pre data-result></pre>';
      tools.append(card);
    }
    return card;
  }

  function setState(card, state, cls) {
    const badge = card.querySelector("[data-state]");
    badge.textContent = state;
    badge.className = `badge ${cls || ""}`;
  }

  function onEvent(type, env) {
    const d = env.data || {};
    switch (type) {
      case "transcript.partial":
        $("partial").textContent = d.text ? `caller (speaking): ${d.text}` : "";
        break;
      case "transcript.final":
        $("partial").textContent = "";
        if (d.text) line("caller", d.text);
        break;
      case "turn.completed":
        if (d.agent_text) line("agent", d.agent_text, d.interrupted ? "interrupted" : "");
        break;
      case "supervisor.whisper":
        line("note", d.text, "whisper");
        break;
      case "analytics.sentiment":
        if (d.speaker === "caller") sentiment(d);
        break;
      case "sentiment.alert":
        $("sentiment-alert").hidden = false;
        break;
      case "tool.call": {
        const card = toolCard(d.tool_call_id);
        card.querySelector("[data-name]").textContent = d.name;
        card.querySelector("[data-args]").textContent = JSON.stringify(d.arguments || {});
        if (!card.querySelector("[data-state]").textContent) setState(card, "running");
        break;
      }
      case "tool.approval_requested": {
        const card = toolCard(d.tool_call_id);
        card.querySelector("[data-name]").textContent = d.name;
        card.querySelector("[data-args]").textContent = JSON.stringify(d.arguments || {});
        if (!card.dataset.decided) {
          setState(card, "waiting for approval", "warn");
          card.querySelector("[data-actions]").hidden = root.dataset.live !== "true";
        }
        break;
      }
      case "tool.approval_decided": {
        const card = toolCard(d.tool_call_id);
        card.dataset.decided = "1";
        card.querySelector("[data-actions]").hidden = true;
        const verdict = d.approved ? "approved" : d.decided_by === "timeout" ? "timed out (denied)" : "denied";
        setState(card, `${verdict} by ${d.decided_by}`, d.approved ? "ok" : "bad");
        break;
      }
      case "tool.result": {
        const card = toolCard(d.tool_call_id);
        card.querySelector("[data-result]").textContent = d.ok ? JSON.stringify(d.result) : `error: ${d.error}`;
        if (!card.dataset.decided) setState(card, d.ok ? "done" : "failed", d.ok ? "ok" : "bad");
        break;
      }
      case "call.ended":
        root.dataset.live = "false";
        $("live-status").textContent = `ended (${d.reason || ""})`;
        tools.querySelectorAll("[data-actions]").forEach((el) => { el.hidden = true; });
        break;
      default:
        break;
    }
  }

  function follow() {
    const source = new EventSource(`/v1/calls/${encodeURIComponent(callId)}/events`);
    source.onopen = () => { $("feed-state").textContent = "live"; };
    source.onerror = () => {
      $("feed-state").textContent = root.dataset.live === "true" ? "reconnecting…" : "call ended";
    };
    source.onmessage = () => {};
    const types = ["transcript.partial", "transcript.final", "turn.completed", "supervisor.whisper",
      "analytics.sentiment", "sentiment.alert", "tool.call", "tool.approval_requested", "tool.approval_decided",
      "tool.result", "call.ended", "call.answered", "call.started"];
    for (const type of types) {
      source.addEventListener(type, (event) => {
        if (seen.has(event.lastEventId)) return;
        seen.add(event.lastEventId);
        try { onEvent(type, JSON.parse(event.data)); } catch (e) { /* one bad event must not stop the page */ }
      });
    }
  }

  async function act(resultId, run) {
    const out = $(resultId);
    try {
      out.textContent = await run();
    } catch (e) {
      out.textContent = e.message;
    }
  }

  tools.addEventListener("click", (event) => {
    const button = event.target.closest("[data-approve], [data-deny]");
    if (!button) return;
    const card = button.closest("[data-tool-call-id]");
    const approved = button.hasAttribute("data-approve");
    card.querySelector("[data-actions]").hidden = true;
    act("control-result", async () => {
      await consoleApi("POST", `/v1/calls/${encodeURIComponent(callId)}/tool-calls/` +
        `${encodeURIComponent(card.dataset.toolCallId)}/decision`, { approved });
      return approved ? "Approved." : "Denied.";
    });
  });

  document.getElementById("whisper-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = document.getElementById("whisper-text");
    act("whisper-result", async () => {
      await consoleApi("POST", `/v1/calls/${encodeURIComponent(callId)}/whisper`, { text: text.value });
      text.value = "";
      return "Sent.";
    });
  });

  document.getElementById("transfer-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const to = document.getElementById("transfer-to").value.trim();
    if (!window.confirm(`Transfer this call to ${to}?`)) return;
    act("control-result", async () => {
      await consoleApi("POST", `/v1/calls/${encodeURIComponent(callId)}/transfer`, { to });
      return "Transfer requested.";
    });
  });

  document.getElementById("end-call").addEventListener("click", () => {
    if (!window.confirm("End this call now?")) return;
    act("control-result", async () => {
      await consoleApi("POST", `/v1/calls/${encodeURIComponent(callId)}/end`, {});
      return "Ending the call.";
    });
  });

  follow();
})();
