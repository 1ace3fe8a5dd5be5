// homefeed console: the buttons on each card post an event as the shown user, then reload that user's page.
(function () {
  "use strict";
  var KEY = "homefeed_admin_token";
  var tokenInput = document.getElementById("token");
  if (tokenInput) {
    tokenInput.value = localStorage.getItem(KEY) || "";
    tokenInput.addEventListener("change", function () { localStorage.setItem(KEY, tokenInput.value); });
  }

  function flash(text, bad) {
    var box = document.getElementById("flash");
    box.textContent = text;
    box.className = bad ? "flash bad" : "flash";
    box.hidden = false;
  }

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("button.act");
    if (!button) return;
    var page = document.getElementById("page");
    var card = button.closest(".card");
    var user = page.dataset.user, item = card.dataset.item, action = button.dataset.action;
    var headers = {"Content-Type": "application/json"};
    var token = tokenInput ? tokenInput.value : "";
    if (token) headers["X-Admin-Token"] = token;
    button.disabled = true;
    fetch("/ui/events", {method: "POST", headers: headers, body: JSON.stringify({user_id: user, item_id: item, action: action})})
      .then(function (r) { return r.json().then(function (body) { return {ok: r.ok, status: r.status, body: body}; }); })
      .then(function (res) {
        if (!res.ok) {
          button.disabled = false;
          flash("refused (" + res.status + "): " + (typeof res.body.detail === "string" ? res.body.detail : JSON.stringify(res.body.detail)), true);
          return;
        }
        var title = card.querySelector(".title").textContent;
        var done = action + " " + title + " (" + card.querySelector(".std").textContent + ") posted as " + res.body.behavior;
        location.assign("/ui?user_id=" + encodeURIComponent(user) + "&shown=" + page.dataset.template + "&done=" + encodeURIComponent(done));
      })
      .catch(function (err) { button.disabled = false; flash("could not post the event: " + err, true); });
  });
  // The buttons work from here on: a deferred script runs after the cards are in the page, so a test
  // (or an impatient user) that clicks before this line gets no handler and its token overwritten.
  document.documentElement.dataset.consoleReady = "1";
})();
