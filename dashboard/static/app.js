// The dashboard's only script (no framework, nothing fetched from
// elsewhere): polled fragments, the live preview, posts into a target,
// confirmations and lazy message histories. Every page works without it
// except the live parts.
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";
  var hdrs = { "X-Requested-With": "fetch", "X-CSRF-Token": csrf };

  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  function signedOut(r) {
    if (r.status === 401) { location.href = "/ui/login"; return true; }
    return false;
  }

  // data-poll: fetch the URL every data-every ms and replace the element
  // with the answer; the answer carries data-poll again while it is live.
  function poll(el) {
    var every = +el.dataset.every || 1000;
    setTimeout(function () {
      if (!el.isConnected) return;
      fetch(el.dataset.poll, { headers: hdrs, credentials: "same-origin" }).then(function (r) {
        if (signedOut(r)) return;
        if (!r.ok) { poll(el); return; }
        return r.text().then(function (html) {
          var n = fragment(html);
          if (!n) { poll(el); return; }
          el.replaceWith(n);
          init(n);
        });
      }).catch(function () { poll(el); });
    }, every);
  }

  function post(url, form, target) {
    var body = new URLSearchParams();
    new FormData(form).forEach(function (v, k) { if (typeof v === "string") body.append(k, v); });
    return fetch(url, { method: "POST", body: body, headers: hdrs, credentials: "same-origin" }).then(function (r) {
      if (signedOut(r)) return;
      return r.text().then(function (html) { if (target) target.innerHTML = html; });
    });
  }

  // data-live on a form: post it (debounced) to the URL on every input and
  // show the answer in data-target. Answers that arrive out of order are
  // dropped.
  function live(form) {
    var timer, seq = 0;
    var target = document.querySelector(form.dataset.target);
    function run() {
      var mine = ++seq;
      var body = new URLSearchParams();
      new FormData(form).forEach(function (v, k) { if (typeof v === "string") body.append(k, v); });
      fetch(form.dataset.live, { method: "POST", body: body, headers: hdrs, credentials: "same-origin" }).then(function (r) {
        if (signedOut(r)) return;
        return r.text().then(function (html) { if (mine === seq) target.innerHTML = html; });
      });
    }
    form.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 200); });
    form.addEventListener("change", function () { clearTimeout(timer); timer = setTimeout(run, 50); });
    run();
  }

  function init(root) {
    var all = [root].concat(Array.prototype.slice.call(root.querySelectorAll("[data-poll],[data-live],details[data-load]")));
    all.forEach(function (el) {
      if (!el.dataset) return;
      if (el.dataset.poll) poll(el);
      if (el.dataset.live) live(el);
      if (el.tagName === "DETAILS" && el.dataset.load) {
        el.addEventListener("toggle", function () {
          if (!el.open || el.dataset.loaded) return;
          el.dataset.loaded = "1";
          fetch(el.dataset.load, { headers: hdrs, credentials: "same-origin" }).then(function (r) { return r.text(); })
            .then(function (html) { el.querySelector(".hist").innerHTML = html; });
        });
      }
    });
  }

  document.addEventListener("click", function (e) {
    var b = e.target.closest("button[data-post]");
    if (!b) return;
    e.preventDefault();
    post(b.dataset.post, b.form, document.querySelector(b.dataset.target));
  });

  // data-confirm on a form or its submit button: ask before sending or
  // cancelling.
  document.addEventListener("submit", function (e) {
    var msg = (e.submitter && e.submitter.dataset.confirm) || e.target.dataset.confirm;
    if (msg && !window.confirm(msg)) e.preventDefault();
  });

  init(document.body);
})();
