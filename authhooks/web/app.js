// congvu password page: strength feedback from the server while typing, and the change via
// POST api/password (the form still works without JavaScript).  No password is stored anywhere.
(function () {
  "use strict";
  var form = document.getElementById("pwform");
  if (!form) { return; }
  var t = JSON.parse(document.getElementById("i18n").textContent);
  var lang = form.elements.lang.value;
  var csrf = form.elements.csrf.value;
  var box = document.getElementById("strength");
  var label = document.getElementById("strength-label");
  var reasons = document.getElementById("strength-reasons");
  var mismatch = document.getElementById("mismatch");
  var result = document.getElementById("result");
  var button = document.getElementById("submit");
  var timer = null, seq = 0;

  function post(path, fields) {
    var body = new URLSearchParams();
    Object.keys(fields).forEach(function (k) { body.append(k, fields[k]); });
    return fetch(path + "?lang=" + encodeURIComponent(lang), {
      method: "POST", credentials: "same-origin", body: body,
      headers: { "Accept": "application/json", "X-CSRF-Token": csrf }
    }).then(function (r) {
      return r.json().then(function (j) { return { status: r.status, body: j }; });
    });
  }

  function list(el, items, cls) {
    el.textContent = "";
    items.forEach(function (text) {
      var li = document.createElement("li");
      if (cls) { li.className = cls; }
      li.textContent = text;
      el.appendChild(li);
    });
  }

  function showStrength(data) {
    if (!data) {
      box.setAttribute("data-score", "-1");
      box.removeAttribute("data-accepted");
      label.textContent = "–";
      list(reasons, [t.typing], "hint");
      return;
    }
    box.setAttribute("data-score", String(data.score));
    box.setAttribute("data-accepted", data.accepted ? "yes" : "no");
    label.textContent = data.label + " (" + data.score + "/4)";
    if (data.accepted) { list(reasons, [t.meets], "good"); }
    else { list(reasons, data.reasons.map(function (r) { return r.text + " (" + r.rule_id + ")"; })); }
  }

  function checkStrength() {
    var pw = form.elements.newpass.value;
    var mine = ++seq;
    if (!pw) { showStrength(null); return; }
    post("api/strength", { user: form.elements.user.value, password: pw }).then(function (res) {
      if (mine === seq && res.body && res.body.ok) { showStrength(res.body); }
    }).catch(function () { /* feedback is a convenience: the change itself is checked again */ });
  }

  function checkMatch() {
    var a = form.elements.newpass.value, b = form.elements.newpass2.value;
    var bad = b.length > 0 && a !== b;
    mismatch.hidden = !bad;
    mismatch.textContent = bad ? t.mismatch : "";
    return !bad;
  }

  function showResult(ok, lines) {
    result.hidden = false;
    result.className = "result " + (ok ? "ok" : "error");
    result.setAttribute("role", ok ? "status" : "alert");
    result.textContent = ok ? t.success : t.failed;
    if (!ok && lines.length) {
      var ul = document.createElement("ul");
      list(ul, lines);
      result.appendChild(ul);
    }
    result.scrollIntoView({ block: "nearest" });
  }

  form.elements.newpass.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(checkStrength, 180);
    checkMatch();
  });
  form.elements.newpass2.addEventListener("input", checkMatch);
  form.elements.user.addEventListener("change", checkStrength);
  document.getElementById("show").addEventListener("change", function (ev) {
    ["curpass", "newpass", "newpass2"].forEach(function (n) {
      form.elements[n].type = ev.target.checked ? "text" : "password";
    });
  });

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (!checkMatch()) { showResult(false, [t.mismatch]); return; }
    button.disabled = true;
    post("api/password", {
      user: form.elements.user.value, curpass: form.elements.curpass.value, newpass: form.elements.newpass.value
    }).then(function (res) {
      var ok = res.status === 200 && res.body && res.body.ok;
      if (ok) {
        ["curpass", "newpass", "newpass2"].forEach(function (n) { form.elements[n].value = ""; });
        showStrength(null);
      }
      var lines = (res.body && res.body.reasons ? res.body.reasons : []).map(function (r) {
        return r.text + " (" + r.rule_id + ")";
      });
      showResult(ok, lines);
    }).catch(function () { showResult(false, [t.network]); })
      .then(function () { button.disabled = false; });
  });
})();
