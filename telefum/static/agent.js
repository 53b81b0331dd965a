// The agent's screen pop: one EventSource, whole snapshots in, the page redrawn from each.
// Everything the CRM says is put in with textContent, never as HTML.
"use strict";

(function () {
  const ext = decodeURIComponent(location.pathname.split("/")[2] || "");
  const token = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const baseTitle = "Telefum · " + ext;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function time(ts) {
    return ts ? new Date(ts * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}) : "";
  }

  const STATE_TEXT = {ringing: "Ringing", answered: "Talking", ended: "Ended"};

  // Who is on the other end, as the agent reads it: an internal call has no outside number;
  // an outside call without one had its number withheld or unreadable.
  function who(call) {
    if (call.caller) return call.caller_display || call.caller;
    return call.direction === "internal" ? "Internal call" : "Unknown number";
  }

  // The CRM part of a call: the card links, or the search link when there is no single match.
  function crmLinks(call) {
    const lk = call.lookup || {};
    const box = el("div", {class: "crm"});
    if (lk.state === "pending") {
      box.append(el("span", {class: "quiet", "data-testid": "lookup-pending", text: "Looking up in the CRM…"}));
      return box;
    }
    if (lk.state === "none") {  // internal, or rang while no page was open: not looked up
      if (!call.caller) {
        if (call.direction !== "internal") {
          box.append(el("span", {class: "quiet", text: "No number to look up in the CRM"}));
        }
      } else if (lk.search_url) {
        box.append(el("a", {href: lk.search_url, target: "_blank", rel: "noopener noreferrer",
                            class: "search-link", "data-testid": "search-link",
                            text: "Not looked up: search in the CRM"}));
      } else box.append(el("span", {class: "quiet", text: "Not looked up in the CRM"}));
      return box;
    }
    const contacts = lk.contacts || [];
    if (contacts.length) {
      const ul = el("ul", {class: "contacts"});
      for (const c of contacts) {
        const label = c.name || ("Contact " + c.id);
        const li = el("li", {},
          el("a", {href: c.url, target: "_blank", rel: "noopener noreferrer",
                   class: "card-link", "data-testid": "card-link", text: label}),
          c.company ? el("span", {class: "company", text: " · " + c.company}) : null,
          c.description ? el("div", {class: "quiet", text: c.description}) : null);
        ul.append(li);
      }
      box.append(ul);
    }
    if (lk.search_url && contacts.length !== 1) {
      const what = lk.state === "failed" ? "CRM lookup failed: search in the CRM"
        : contacts.length === 0 ? "Unknown caller: search in the CRM"
        : "Several contacts: search in the CRM";
      box.append(el("a", {href: lk.search_url, target: "_blank", rel: "noopener noreferrer",
                          class: "search-link", "data-testid": "search-link", text: what}));
    }
    return box;
  }

  function callBack(call) {
    if (!call.caller) return null;
    const b = el("button", {type: "button", class: "call-back", "data-number": call.caller,
                            text: "Call back"});
    b.addEventListener("click", () => dial(call.caller));
    return b;
  }

  function popCard(call) {
    const tracking = call.did
      ? el("div", {class: "tracking", "data-testid": "tracking"},
           (call.direction === "in" ? "Called " : "Via ") + (call.did_display || call.did),
           call.source ? el("span", {class: "source", "data-testid": "source", text: " · " + call.source}) : null)
      : null;
    return el("article", {class: "pop state-" + call.state, "data-testid": "pop",
                          "data-call-id": call.call_id, "data-state": call.state},
      el("div", {class: "row"},
        el("span", {class: "badge", "data-testid": "state", text: STATE_TEXT[call.state] || call.state}),
        el("span", {class: "dir", text: call.direction === "out" ? "outgoing" : call.direction === "in" ? "incoming" : "internal"})),
      el("div", {class: "caller", "data-testid": "caller", text: who(call)}),
      tracking,
      crmLinks(call));
  }

  function recentItem(call) {
    return el("li", {"data-testid": "recent", "data-call-id": call.call_id},
      el("span", {class: "when", text: time(call.rang_at)}),
      el("span", {class: "caller", "data-testid": "recent-caller", text: who(call)}),
      el("span", {class: "outcome outcome-" + (call.outcome || "").split(" ")[0], text: call.outcome || ""}),
      el("span", {class: "source", text: call.source || ""}),
      crmLinks(call),
      callBack(call) || el("span"));
  }

  function render(snap) {
    const now = $("now");
    now.replaceChildren();
    if (!snap.calls.length) now.append(el("p", {class: "quiet", id: "idle", text: "No call right now."}));
    for (const call of snap.calls) now.append(popCard(call));
    $("recent").replaceChildren(...snap.history.map(recentItem));
    const ringing = snap.calls.find((c) => c.state === "ringing");
    document.title = ringing ? "☎ " + who(ringing) : baseTitle;
  }

  function setLink(state, text) {
    const link = $("link");
    link.dataset.state = state;
    link.textContent = text;
  }

  async function dial(number) {
    const out = $("dial-result");
    out.textContent = "Calling " + number + "…";
    try {
      const resp = await fetch("/originate", {
        method: "POST",
        headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
        body: JSON.stringify({extension: ext, number: number}),
      });
      const data = await resp.json().catch(() => ({}));
      out.textContent = resp.ok ? "Your phone rings: pick it up to call " + data.number
                                : "Not called: " + (data.error || resp.status);
      out.dataset.ok = resp.ok ? "1" : "0";
    } catch (e) {
      out.textContent = "Not called: the bridge did not answer";
      out.dataset.ok = "0";
    }
  }

  function connect() {
    const src = new EventSource("/agent/" + encodeURIComponent(ext) + "/events?token=" + encodeURIComponent(token));
    src.addEventListener("open", () => setLink("live", "live"));
    src.addEventListener("state", (ev) => { setLink("live", "live"); render(JSON.parse(ev.data)); });
    src.addEventListener("error", () => {
      if (src.readyState === EventSource.CLOSED) {
        setLink("down", "disconnected: reload the page");
      } else {
        setLink("reconnecting", "reconnecting…");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("ext").textContent = ext;
    document.title = baseTitle;
    $("dial").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const n = $("dial-number").value.trim();
      if (n) dial(n);
    });
    connect();
  });
})();
