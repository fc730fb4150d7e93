// fleetscan report: sorting, filtering, paging and lazily opened findings.
// The page is complete without this script; it only adds controls. Untrusted text (host
// names, reasons, evidence) is only ever set through textContent, never parsed as markup.
(function () {
  "use strict";
  var table = document.getElementById("host-table");
  if (!table) { return; }
  var hosts = Array.prototype.slice.call(table.tBodies);
  var controls = document.getElementById("controls");
  var verdictSelect = document.getElementById("filter-verdict");
  var textInput = document.getElementById("filter-text");
  var sizeSelect = document.getElementById("page-size");
  var shown = document.getElementById("shown");
  var prev = document.getElementById("prev");
  var next = document.getElementById("next");
  var page = 0;
  var matching = hosts;
  var lazy = null;

  function keyOf(tbody, key) {
    if (key === "host") { return tbody.getAttribute("data-host") || ""; }
    if (key === "rank") { return Number(tbody.getAttribute("data-rank")); }
    var cell = tbody.querySelector('td[data-key="' + key + '"]');
    return cell ? cell.textContent : "";
  }

  function apply() {
    var verdict = verdictSelect.value;
    var text = textInput.value.trim().toLowerCase();
    matching = hosts.filter(function (tbody) {
      if (verdict && tbody.getAttribute("data-verdict") !== verdict) { return false; }
      return !text || tbody.rows[0].textContent.toLowerCase().indexOf(text) !== -1;
    });
    var size = Number(sizeSelect.value);
    var pages = size ? Math.max(1, Math.ceil(matching.length / size)) : 1;
    page = Math.min(page, pages - 1);
    var first = size ? page * size : 0;
    var last = size ? first + size : matching.length;
    var visible = new Set(matching.slice(first, last));
    hosts.forEach(function (tbody) { tbody.hidden = !visible.has(tbody); });
    shown.textContent = matching.length
      ? "showing " + (first + 1) + "–" + Math.min(last, matching.length) + " of " + matching.length + " host(s)"
      : "no host matches";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  function sortBy(th) {
    var key = th.getAttribute("data-key");
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    if (key === "rank") { ascending = th.getAttribute("aria-sort") === "descending"; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
    // Keys read once per row, not once per comparison: a fleet has thousands of rows.
    var keyed = hosts.map(function (tbody) {
      return { tbody: tbody, key: keyOf(tbody, key), name: keyOf(tbody, "host") };
    });
    keyed.sort(function (a, b) {
      var order = typeof a.key === "number" ? a.key - b.key : collator.compare(a.key, b.key);
      if (order === 0) { order = collator.compare(a.name, b.name); }
      return ascending ? order : -order;
    });
    hosts = keyed.map(function (item) { return item.tbody; });
    var fragment = document.createDocumentFragment();
    hosts.forEach(function (tbody) { fragment.appendChild(tbody); });
    table.appendChild(fragment);
    page = 0;
    apply();
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  // Builds the same markup the template gives inline hosts, from the interned JSON tables.
  function fill(details) {
    if (lazy === null) {
      var source = document.getElementById("lazy-details");
      lazy = source ? JSON.parse(source.textContent) : { hosts: {} };
    }
    var anchor = details.closest("tbody").id;
    var entries = lazy.hosts[anchor];
    if (!entries) { return; }
    var s = lazy.strings;
    entries.forEach(function (entry) {
      var f = lazy.findings[entry[0]];
      var box = element("div", "finding");
      var head = element("h4");
      head.appendChild(element("span", "badge v-" + s[f[1]], s[f[1]]));
      head.appendChild(document.createTextNode(" "));
      head.appendChild(element("code", "", s[f[0]]));
      head.appendChild(element("span", "sev", s[f[2]]));
      if (f[6]) { head.appendChild(element("span", "observed", "observed by the KVM canary")); }
      box.appendChild(head);
      box.appendChild(element("p", "title", s[f[3]]));
      box.appendChild(element("p", "reason", s[f[4]]));
      if (s[f[8]]) { box.appendChild(element("p", "waived", s[f[8]])); }
      if (s[f[5]]) {
        var fix = element("p", "remediation");
        fix.appendChild(element("strong", "", "Remediation:"));
        fix.appendChild(document.createTextNode(" " + s[f[5]]));
        box.appendChild(fix);
      }
      if (f[7].length) {
        var evidence = element("table", "evidence");
        var headRow = evidence.createTHead().insertRow();
        ["fact", "value", "source"].forEach(function (name) {
          var th = element("th", "", name);
          th.scope = "col";
          headRow.appendChild(th);
        });
        var body = evidence.createTBody();
        f[7].forEach(function (index) {
          var e = lazy.evidence[index];
          var row = body.insertRow();
          row.insertCell().appendChild(element("code", "", s[e[0]]));
          var value = row.insertCell();
          value.className = "value";
          value.textContent = s[e[1]];
          var where = row.insertCell();
          where.className = "source";
          where.textContent = s[e[2]];
        });
        box.appendChild(evidence);
      }
      var fp = element("p", "fp", "fingerprint ");
      fp.appendChild(element("code", "", entry[1]));
      box.appendChild(fp);
      details.appendChild(box);
    });
    details.classList.remove("lazy");
  }

  table.addEventListener("toggle", function (event) {
    var details = event.target;
    if (details.open && details.classList && details.classList.contains("lazy")) { fill(details); }
  }, true);

  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.classList.add("sortable");
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(th); }
    });
  });
  verdictSelect.addEventListener("change", function () { page = 0; apply(); });
  textInput.addEventListener("input", function () { page = 0; apply(); });
  sizeSelect.addEventListener("change", function () { page = 0; apply(); });
  prev.addEventListener("click", function () { page -= 1; apply(); });
  next.addEventListener("click", function () { page += 1; apply(); });
  controls.addEventListener("submit", function (event) { event.preventDefault(); });

  // A link to a host (from "Needs action") shows that host even when paging hid it.
  function reveal() {
    var target = location.hash ? document.getElementById(location.hash.slice(1)) : null;
    if (target && target.tagName === "TBODY" && target.hidden) {
      verdictSelect.value = "";
      textInput.value = "";
      sizeSelect.value = "0";
      apply();
      target.scrollIntoView();
    }
  }
  window.addEventListener("hashchange", reveal);
  window.addEventListener("beforeprint", function () { hosts.forEach(function (t) { t.hidden = false; }); });
  window.addEventListener("afterprint", apply);

  controls.hidden = false;
  apply();
  reveal();
}());
