// Small building blocks shared by the pages: elements, announcements,
// dialogs that move focus in and give it back, keyboard-usable menus.

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const page = {
  canEdit: document.body.dataset.canEdit === "true",
  timeZone: document.body.dataset.timezone || "UTC",
};

// Says something to screen-reader users (and shows it): the live region is polite.
export function announce(message) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  // A fresh text node after a tick, so the same message twice is announced twice.
  setTimeout(() => {
    region.textContent = message;
  }, 50);
}

export const TYPE_LABELS = { earn: "Earn Points", redeem: "Redeem Points" };
export const ENVIRONMENT_LABELS = { staging: "Staging", production: "Production" };
export const STATUS_LABELS = {
  draft: "Draft",
  scheduled: "Scheduled",
  active: "Active",
  ended: "Ended",
  paused: "Paused",
  archived: "Archived",
};

export const points = (value) => new Intl.NumberFormat("en-GB").format(value);

export function statusBadge(status) {
  return el("span", { class: `badge status-${status}`, text: STATUS_LABELS[status] || status });
}

export function capUsage(rule) {
  if (rule.capMax === null || rule.capMax === undefined) {
    return el("span", { class: "cap-text" }, `${points(rule.capUsed)} used · no cap`);
  }
  const percent = Math.min(100, Math.round((rule.capUsed / rule.capMax) * 100));
  const label = `${points(rule.capUsed)} of ${points(rule.capMax)} points used`;
  return el(
    "div",
    { class: "cap" },
    el("progress", { max: rule.capMax, value: rule.capUsed, "aria-label": label }),
    el("span", { class: "cap-text" }, `${label} (${percent}%)`),
  );
}

export function definitionList(target, pairs) {
  target.replaceChildren(
    ...pairs.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", {}, value)]),
  );
}

// Rebuilds part of the page without losing the user's place: when focus was on a
// button inside `container`, it moves to the new button of the same name.
export function keepFocus(container, rebuild) {
  const active = container.contains(document.activeElement) ? document.activeElement : null;
  const name = active && (active.getAttribute("aria-label") || active.textContent);
  rebuild();
  if (!name) return;
  const again = [...container.querySelectorAll("button")].find(
    (button) => (button.getAttribute("aria-label") || button.textContent) === name,
  );
  (again || document.getElementById("main")).focus();
}

// --- dialogs -------------------------------------------------------------------

// Opens a <dialog> modally, focusing `focus` (or its first control), and gives
// focus back to whatever had it once the dialog closes.
export function openDialog(dialog, focus) {
  const opener = document.activeElement;
  dialog.addEventListener(
    "close",
    () => {
      if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
    },
    { once: true },
  );
  dialog.showModal();
  const target =
    focus || dialog.querySelector("input, select, textarea, button:not([disabled])");
  if (target) target.focus();
}

export function showError(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

// --- menus -----------------------------------------------------------------------

// A menu button: Enter, Space or ArrowDown open it on the first item, ArrowUp on
// the last; arrows, Home and End move between items; Escape closes it and
// returns focus to the button; Tab or a click elsewhere closes it.
export function menuButton(label, items) {
  const id = `menu-${Math.random().toString(36).slice(2)}`;
  const button = el("button", {
    type: "button",
    class: "kebab",
    "aria-haspopup": "menu",
    "aria-expanded": "false",
    "aria-controls": id,
    "aria-label": label,
  }, el("span", { "aria-hidden": "true", text: "⋮" }));
  const menu = el("ul", { role: "menu", id, class: "menu", hidden: true, "aria-label": label });
  const entries = items.map(({ text, run }) => {
    const item = el("button", { type: "button", role: "menuitem", tabindex: "-1", text });
    item.addEventListener("click", () => {
      // Focus goes back to the button first, so a dialog the item opens returns it there.
      close(true);
      run(button);
    });
    menu.append(el("li", { role: "none" }, item));
    return item;
  });

  function open(index) {
    document.querySelectorAll(".menu:not([hidden])").forEach((other) => {
      if (other !== menu) other.dispatchEvent(new Event("menu-close"));
    });
    menu.hidden = false;
    button.setAttribute("aria-expanded", "true");
    entries[(index + entries.length) % entries.length].focus();
  }

  function close(restoreFocus) {
    if (menu.hidden) return;
    menu.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (restoreFocus) button.focus();
  }

  menu.addEventListener("menu-close", () => close(false));
  button.addEventListener("click", () => (menu.hidden ? open(0) : close(true)));
  button.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") {
      event.preventDefault();
      open(0);
    } else if (event.key === "ArrowUp") {
      event.preventDefault();
      open(-1);
    }
  });
  menu.addEventListener("keydown", (event) => {
    const current = entries.indexOf(document.activeElement);
    const moves = { ArrowDown: current + 1, ArrowUp: current - 1, Home: 0, End: -1 };
    if (event.key in moves) {
      event.preventDefault();
      entries[(moves[event.key] + entries.length) % entries.length].focus();
    } else if (event.key === "Escape") {
      event.preventDefault();
      close(true);
    } else if (event.key === "Tab") {
      close(false);
    }
  });
  document.addEventListener("click", (event) => {
    if (!menu.hidden && !menu.contains(event.target) && !button.contains(event.target)) {
      close(false);
    }
  });
  return el("div", { class: "menu-wrap" }, button, menu);
}
