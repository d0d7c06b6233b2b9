// imagine-bot playground page: plain JS, no build step. State comes from the WebSocket (/ws): a full "state"
// first, then every event of the local Discord server. Actions are POSTs to /api/* as the picked member.
"use strict";

const EPHEMERAL = 1 << 6;
const LOADING = 1 << 7;
const AVATAR_COLOURS = ["#5865f2", "#757e8a", "#3ba55c", "#faa61a", "#ed4245", "#eb459e"];
const QUICK_REACTIONS = ["🔄", "⭐", "❤️"];

const S = {
  guild: null,
  channels: [],
  members: [],
  commands: [],
  bot: null,
  info: {},
  messages: new Map(), // id -> message (current state)
  me: null, // member id
  channel: null, // channel id
  unread: new Set(),
  dismissed: new Set(),
  rendered: new Map(), // id -> {key, el}
  ws: null,
  retry: 0,
  popupIndex: 0,
  pending: new Map(), // interaction id -> timer: Discord says "did not respond" after 3 s without an answer
  acked: new Set(), // interactions answered (the answer can arrive on the WebSocket before the POST returns)
};

const $ = (id) => document.getElementById(id);

// Emoji drawn as small SVGs, like Discord's Twemoji images: consistent everywhere, and visible on machines
// without a colour emoji font (a headless server often has none). Anything else stays text.
const SVG_EMOJI = {
  "🔄": '<rect x="2" y="2" width="32" height="32" rx="6" fill="#3B88C3"/><g fill="none" stroke="#fff" stroke-width="3.2" stroke-linecap="round"><path d="M9.5 18a8.5 8.5 0 0 1 14.5-6"/><path d="M26.5 18a8.5 8.5 0 0 1-14.5 6"/></g><path fill="#fff" d="M27.5 7.5v8h-8zM8.5 28.5v-8h8z"/>',
  "⭐": '<path fill="#FFAC33" d="M18 2.5l4.8 10.1 11 1.4-8.1 7.6 2.1 10.9L18 27.1 8.2 32.5l2.1-10.9L2.2 14l11-1.4z"/>',
  "🗑": '<path fill="#99AAB5" d="M8 10h20l-2 22a2 2 0 0 1-2 2H12a2 2 0 0 1-2-2z"/><rect x="5" y="6" width="26" height="4" rx="2" fill="#CCD6DD"/><rect x="14" y="3" width="8" height="4" rx="1.5" fill="#CCD6DD"/><path stroke="#66757F" stroke-width="2" d="M14 14v16M18 14v16M22 14v16"/>',
  "ℹ": '<rect x="2" y="2" width="32" height="32" rx="6" fill="#3B88C3"/><circle cx="18" cy="10" r="2.6" fill="#fff"/><rect x="15.6" y="15" width="4.8" height="13" rx="1.5" fill="#fff"/>',
  "⚠": '<path fill="#FFCC4D" d="M16.3 4.4a2 2 0 0 1 3.4 0l14 25A2 2 0 0 1 32 32.5H4a2 2 0 0 1-1.7-3.1z"/><rect x="16" y="11" width="4" height="12" rx="2" fill="#231F20"/><circle cx="18" cy="27" r="2.2" fill="#231F20"/>',
  "✅": '<rect x="2" y="2" width="32" height="32" rx="6" fill="#77B255"/><path fill="none" stroke="#fff" stroke-width="4" stroke-linecap="round" stroke-linejoin="round" d="M9 18.5l6 6L27 11"/>',
  "❌": '<path stroke="#DD2E44" stroke-width="6" stroke-linecap="round" d="M8 8l20 20M28 8L8 28"/>',
  "✖": '<path stroke="#66757F" stroke-width="5" stroke-linecap="round" d="M9 9l18 18M27 9L9 27"/>',
  "🚫": '<circle cx="18" cy="18" r="14" fill="none" stroke="#DD2E44" stroke-width="4.5"/><path stroke="#DD2E44" stroke-width="4.5" d="M8.5 8.5l19 19"/>',
  "🏆": '<path fill="#FFAC33" d="M9 4h18v8a9 9 0 0 1-18 0z"/><path fill="none" stroke="#FFAC33" stroke-width="3" d="M9 7H4.5v2a6 6 0 0 0 6 6M27 7h4.5v2a6 6 0 0 1-6 6"/><rect x="16" y="20" width="4" height="7" fill="#F4900C"/><rect x="10" y="27" width="16" height="5" rx="1.5" fill="#C1694F"/>',
  "🥇": '<path fill="#55ACEE" d="M10 2h6l4 10h-6zM26 2h-6l-4 10h6z"/><circle cx="18" cy="23" r="11" fill="#FFAC33"/><text x="18" y="28" font-size="13" font-family="sans-serif" font-weight="700" text-anchor="middle" fill="#fff">1</text>',
  "🥈": '<path fill="#55ACEE" d="M10 2h6l4 10h-6zM26 2h-6l-4 10h6z"/><circle cx="18" cy="23" r="11" fill="#CCD6DD"/><text x="18" y="28" font-size="13" font-family="sans-serif" font-weight="700" text-anchor="middle" fill="#66757F">2</text>',
  "🥉": '<path fill="#55ACEE" d="M10 2h6l4 10h-6zM26 2h-6l-4 10h6z"/><circle cx="18" cy="23" r="11" fill="#FF8A3B"/><text x="18" y="28" font-size="13" font-family="sans-serif" font-weight="700" text-anchor="middle" fill="#fff">3</text>',
  "🏁": '<rect x="5" y="3" width="2.5" height="31" rx="1" fill="#66757F"/><path fill="#fff" d="M7.5 4h24v16h-24z"/><path fill="#292F33" d="M7.5 4h6v4h-6zM19.5 4h6v4h-6zM13.5 8h6v4h-6zM25.5 8h6v4h-6zM7.5 12h6v4h-6zM19.5 12h6v4h-6zM13.5 16h6v4h-6zM25.5 16h6v4h-6z"/>',
  "🗳": '<rect x="4" y="14" width="28" height="18" rx="2" fill="#99AAB5"/><rect x="10" y="4" width="16" height="14" fill="#fff" transform="rotate(-8 18 11)"/><rect x="8" y="17" width="20" height="2.5" fill="#292F33"/>',
  "⏳": '<rect x="7" y="3" width="22" height="3" rx="1.5" fill="#C1694F"/><rect x="7" y="30" width="22" height="3" rx="1.5" fill="#C1694F"/><path fill="#CCD6DD" d="M10 6h16c0 7-6 9-6 12s6 5 6 12H10c0-7 6-9 6-12s-6-5-6-12z"/><path fill="#FFAC33" d="M13 27c1-3 5-4 5-6 0 2 4 3 5 6z"/>',
  "❤": '<path fill="#DD2E44" d="M18 32C6 23 2 16 5.5 9.5 9 3.5 15.5 5 18 10c2.5-5 9-6.5 12.5-.5C34 16 30 23 18 32z"/>',
  "👁": '<path fill="#E1E8ED" d="M2 18C7 9 13 6.5 18 6.5S29 9 34 18c-5 9-11 11.5-16 11.5S7 27 2 18z"/><circle cx="18" cy="18" r="7" fill="#55ACEE"/><circle cx="18" cy="18" r="3.5" fill="#292F33"/>',
  "🎨": '<path fill="#D99E82" d="M18 3C9 3 2 9.5 2 17.5 2 25 8.5 33 16 33c3 0 3.5-2.5 2.5-4.5S18 24 21.5 24H27c4 0 7-3 7-7C34 9 27 3 18 3z"/><circle cx="10" cy="15" r="3" fill="#DD2E44"/><circle cx="16" cy="9" r="3" fill="#FFCC4D"/><circle cx="24" cy="10" r="3" fill="#77B255"/><circle cx="27.5" cy="17" r="3" fill="#55ACEE"/><circle cx="10" cy="24" r="3.5" fill="#fff"/>',
};
const EMOJI_RE = new RegExp(`(${Object.keys(SVG_EMOJI).join("|")})\\uFE0F?`, "gu");

function emojiSrc(emoji) {
  const body = SVG_EMOJI[emoji.replace(/\uFE0F/g, "")];
  return body ? `data:image/svg+xml,${encodeURIComponent(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36">${body}</svg>`)}` : null;
}

function emojiHtml(text) {
  // Replaces known emoji in already-escaped HTML text by their images (alt keeps the character for copy/paste).
  return text.replace(EMOJI_RE, (match) => `<img class="emoji" alt="${match}" draggable="false" src="${emojiSrc(match)}">`);
}

function emojiNode(emoji, cls = "emoji") {
  const src = emojiSrc(emoji || "");
  return src ? el("img", { class: cls, alt: emoji, draggable: "false", src }) : el("span", { class: cls }, emoji);
}

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "html") node.innerHTML = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function cmpId(a, b) {
  // Snowflakes are decimal strings larger than 2^53: compare by length, then lexically.
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

function colourFor(id) {
  let n = 0;
  for (const ch of String(id)) n = (n * 31 + ch.charCodeAt(0)) % 1000003;
  return AVATAR_COLOURS[n % AVATAR_COLOURS.length];
}

function memberById(id) {
  return S.members.find((m) => m.id === String(id));
}

function displayName(user) {
  if (!user) return "unknown";
  const member = memberById(user.id);
  return (member && member.display_name) || user.global_name || user.username;
}

function avatar(user, extraClass = "") {
  const isBot = user && user.bot;
  const name = user ? displayName(user) : "?";
  return el("div", {
    class: `avatar ${isBot ? "bot" : ""} ${extraClass}`,
    style: isBot ? null : `background:${colourFor(user ? user.id : "0")}`,
    "aria-hidden": "true",
  }, isBot ? emojiNode("🎨", "avatar-emoji") : name.slice(0, 1).toUpperCase());
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const today = new Date();
  return date.toDateString() === today.toDateString() ? `Today at ${time}` : `${date.toLocaleDateString()} ${time}`;
}

function relativeTime(seconds) {
  const delta = Math.round(seconds - Date.now() / 1000);
  const abs = Math.abs(delta);
  const [value, unit] = abs < 60 ? [abs, "second"] : abs < 3600 ? [Math.round(abs / 60), "minute"]
    : abs < 86400 ? [Math.round(abs / 3600), "hour"] : [Math.round(abs / 86400), "day"];
  const text = `${value} ${unit}${value === 1 ? "" : "s"}`;
  return delta >= 0 ? `in ${text}` : `${text} ago`;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// ------------------------------------------------------------------ Discord markdown (the subset the bot uses)

function markdown(text, { embed = false } = {}) {
  if (!text) return "";
  const slots = [];
  const keep = (html) => `\u0000${slots.push(html) - 1}\u0000`;
  let s = String(text);
  s = s.replace(/```(?:[\w+-]*\n)?([\s\S]*?)```\n?/g, (_, code) => keep(`<pre><code>${escapeHtml(code.replace(/\n$/, ""))}</code></pre>`));
  s = s.replace(/`([^`\n]+)`/g, (_, code) => keep(`<code>${escapeHtml(code)}</code>`));
  s = s.replace(/\\([\\*_~`|>#\-[\]()])/g, (_, ch) => keep(escapeHtml(ch)));
  s = escapeHtml(s);
  s = s.replace(/&lt;@!?(\d+)&gt;/g, (_, id) => {
    const member = memberById(id);
    const name = member ? member.display_name : (S.bot && S.bot.id === id ? S.bot.username : "unknown-user");
    return keep(`<span class="mention${id === S.me ? " me" : ""}">@${escapeHtml(name)}</span>`);
  });
  s = s.replace(/&lt;#(\d+)&gt;/g, (_, id) => {
    const channel = S.channels.find((c) => c.id === id);
    return keep(`<span class="mention jump" data-channel="${id}">#${escapeHtml(channel ? channel.name : "unknown")}</span>`);
  });
  s = s.replace(/&lt;@&amp;(\d+)&gt;/g, () => keep(`<span class="mention">@role</span>`));
  s = s.replace(/&lt;t:(\d+)(?::([tTdDfFR]))?&gt;/g, (_, secs, style) => {
    const date = new Date(Number(secs) * 1000);
    const shown = style === "R" ? relativeTime(Number(secs)) : date.toLocaleString();
    const live = style === "R" ? ` class="ts-rel" data-ts="${secs}"` : "";
    return keep(`<code${live} title="${escapeHtml(date.toLocaleString())}">${escapeHtml(shown)}</code>`);
  });
  s = s.replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, (_, label, url) => keep(linkHtml(url, label)));
  s = s.replace(/https?:\/\/[^\s<]+[^\s<.,:;"')\]]/g, (url) => keep(linkHtml(url.replace(/&amp;/g, "&"), null)));
  s = s.replace(/\*\*([\s\S]+?)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/__([\s\S]+?)__/g, "<u>$1</u>");
  s = s.replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>");
  s = s.replace(/(^|\W)_([^_\n]+)_(?=\W|$)/g, "$1<em>$2</em>");
  s = s.replace(/~~([\s\S]+?)~~/g, "<s>$1</s>");
  s = s.replace(/\|\|([\s\S]+?)\|\|/g, '<span class="spoiler-text">$1</span>');
  if (!embed) s = s.replace(/(^|\n)&gt; ([^\n]*)\n?/g, "$1<blockquote>$2</blockquote>");
  s = emojiHtml(s);
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => slots[Number(i)]);
}

function linkHtml(url, label) {
  // Links to a message of this server ("Done: <link>") jump to it on the page instead of discord.com.
  const match = /\/channels\/(\d+)\/(\d+)\/(\d+)/.exec(url);
  if (match) {
    const channel = S.channels.find((c) => c.id === match[2]);
    const text = label || `#${escapeHtml(channel ? channel.name : "channel")} › message`; // label: already escaped
    return `<a class="jump" data-channel="${match[2]}" data-message="${match[3]}" href="#">${text}</a>`;
  }
  return `<a href="${escapeHtml(url)}" target="_blank" rel="noopener">${label || escapeHtml(url)}</a>`;
}

// ------------------------------------------------------------------ rendering messages

function visible(message) {
  if (message.channel_id !== S.channel || message.deleted) return false;
  if (message.ephemeral || (message.flags & EPHEMERAL)) {
    return message.visible_to === S.me && !S.dismissed.has(message.id);
  }
  return true;
}

function isImage(att) {
  return (att.content_type || "").startsWith("image/") || /\.(png|jpe?g|gif|webp)$/i.test(att.filename);
}

function renderMessage(message, grouped) {
  const ephemeral = Boolean(message.flags & EPHEMERAL);
  const loading = Boolean(message.flags & LOADING);
  const meta = message.interaction_metadata;
  const classes = ["message"];
  if (ephemeral) classes.push("ephemeral");
  if (grouped) classes.push("grouped");
  const node = el("div", {
    class: classes.join(" "), id: `m-${message.id}`,
    dataset: { id: message.id, author: message.author.id, ephemeral: ephemeral ? "1" : "0" },
  });

  if (meta && meta.user && !grouped) {
    node.append(el("div", { class: "reply-line" },
      avatar(meta.user, "mini-avatar"),
      el("span", { class: "who" }, displayName(meta.user)),
      meta.name ? el("span", {}, " used ", el("span", { class: "cmd" }, `/${meta.name}`))
        : el("span", {}, meta.type === 3 ? " pressed a button" : meta.type === 5 ? " submitted a form" : "")));
  }
  node.append(avatar(message.author));
  if (grouped) node.append(el("div", { class: "gutter-time" }, formatTime(message.timestamp).replace(/^Today at /, "")));

  const body = el("div", { class: "body" });
  if (!grouped) {
    body.append(el("div", { class: "header" },
      el("span", { class: "author", style: message.author.bot ? null : roleColour(message.author.id) },
        message.author_display || displayName(message.author)),
      message.author.bot ? el("span", { class: "bot-tag" }, "App") : null,
      el("span", { class: "timestamp", title: message.timestamp }, formatTime(message.timestamp))));
  }

  if (loading) {
    body.append(el("div", { class: "thinking", dataset: { testid: "thinking" } },
      `${S.bot ? S.bot.username : "The bot"} is thinking`, el("span", { class: "dots" }, el("i"), el("i"), el("i"))));
  } else {
    const content = el("div", { class: "content", html: markdown(message.content) });
    if (message.edited_timestamp && !message.interaction_id) content.append(" ", el("span", { class: "edited" }, "(edited)"));
    body.append(content);
  }

  const attachments = message.attachments || [];
  const usedInEmbeds = new Set();
  for (const embed of message.embeds || []) body.append(renderEmbed(embed, attachments, usedInEmbeds));
  const shown = attachments.filter((a) => !usedInEmbeds.has(a.filename));
  if (shown.length) {
    const box = el("div", { class: `attachments${shown.length > 1 ? " many" : ""}` });
    for (const att of shown) box.append(renderAttachment(att));
    body.append(box);
  }
  if ((message.components || []).length) body.append(renderComponents(message));
  const reactions = renderReactions(message);
  if (reactions) body.append(reactions);
  if (ephemeral) {
    body.append(el("div", { class: "ephemeral-note", dataset: { testid: "ephemeral-note" } },
      emojiNode("👁"), " Only you can see this • ",
      el("a", { onclick: () => { S.dismissed.add(message.id); render(); } }, "Dismiss message")));
  }
  node.append(body);

  if (!ephemeral && !loading) {
    const bar = el("div", { class: "hover-bar" });
    for (const emoji of QUICK_REACTIONS) {
      bar.append(el("button", { title: `React with ${emoji}`, onclick: () => toggleReaction(message.id, emoji) }, emojiNode(emoji)));
    }
    node.append(bar);
  }
  return node;
}

function roleColour(userId) {
  const member = memberById(userId);
  if (!member) return null;
  if (member.admin) return "color:#f47b67";
  if (member.roles.includes("Artist")) return "color:#3ba55c";
  if (member.owner) return "color:#faa61a";
  return null;
}

function renderEmbed(embed, attachments, used) {
  const resolveUrl = (url) => {
    if (url && url.startsWith("attachment://")) {
      const name = url.slice("attachment://".length);
      const att = attachments.find((a) => a.filename === name);
      if (att) { used.add(name); return att.url; }
    }
    return url;
  };
  const colour = typeof embed.color === "number" ? `#${embed.color.toString(16).padStart(6, "0")}` : "#1e1f22";
  const box = el("div", { class: "embed", style: `border-left-color:${colour}` });
  if (embed.thumbnail && embed.thumbnail.url) {
    box.append(el("img", { class: "embed-thumb media-img", src: resolveUrl(embed.thumbnail.url), width: 80 }));
  }
  if (embed.author && embed.author.name) box.append(el("div", { class: "embed-author" }, embed.author.name));
  if (embed.title) {
    const title = el("div", { class: "embed-title", html: markdown(embed.title, { embed: true }) });
    box.append(embed.url ? el("a", { href: embed.url, target: "_blank" }, title) : title);
  }
  if (embed.description) box.append(el("div", { class: "embed-desc", html: markdown(embed.description, { embed: true }) }));
  if ((embed.fields || []).length) {
    const fields = el("div", { class: "embed-fields" });
    for (const field of embed.fields) {
      fields.append(el("div", { class: `embed-field${field.inline ? "" : " full"}` },
        el("div", { class: "name", html: markdown(field.name, { embed: true }) }),
        el("div", { class: "value", html: markdown(field.value, { embed: true }) })));
    }
    box.append(fields);
  }
  if (embed.image && embed.image.url) {
    box.append(el("div", { class: "embed-image" }, el("img", { class: "media-img", src: resolveUrl(embed.image.url), alt: "" })));
  }
  const footer = [embed.footer && embed.footer.text, embed.timestamp && formatTime(embed.timestamp)].filter(Boolean);
  if (footer.length) box.append(el("div", { class: "embed-footer" }, footer.join(" • ")));
  return box;
}

function renderAttachment(att) {
  if (isImage(att)) {
    const spoiler = att.filename.startsWith("SPOILER_");
    const img = el("img", {
      class: "media-img attachment-img", src: att.url, alt: att.description || att.filename, loading: "eager",
      width: att.width || null, height: att.height || null, dataset: { filename: att.filename },
    });
    img.addEventListener("load", () => stickToBottom());
    const box = el("div", { class: `media${spoiler ? " spoiler" : ""}`, title: att.filename }, img);
    box.addEventListener("click", () => {
      if (box.classList.contains("spoiler")) { box.classList.remove("spoiler"); return; }
      openViewer(att.url);
    });
    return box;
  }
  return el("div", { class: "file" }, el("span", { class: "icon" }, "📄"),
    el("div", {}, el("a", { href: att.url, download: att.filename }, att.filename), el("div", { class: "size" }, formatBytes(att.size || 0))));
}

function renderComponents(message) {
  const box = el("div", { class: "components" });
  for (const row of message.components) {
    const children = row.type === 1 ? row.components || [] : [row];
    const line = el("div", { class: "action-row" });
    for (const item of children) {
      if (item.type === 2) {
        const emoji = item.emoji ? (item.emoji.name || "") : "";
        if (item.style === 5 && item.url) {
          line.append(el("a", { class: "btn s5", href: item.url, target: "_blank" }, emoji, item.label || "", " ↗"));
          continue;
        }
        const button = el("button", {
          class: `btn s${item.style || 2}`, disabled: Boolean(item.disabled), type: "button",
          dataset: { customId: item.custom_id || "" },
        }, emoji ? emojiNode(emoji) : null, item.label || "");
        button.addEventListener("click", () => pressButton(message.id, item.custom_id, button));
        line.append(button);
      } else if (item.type === 3) {
        const select = el("select", { class: "select", dataset: { customId: item.custom_id }, disabled: Boolean(item.disabled) },
          el("option", { value: "" }, item.placeholder || "Make a selection"),
          (item.options || []).map((o) => el("option", { value: o.value }, `${o.emoji ? o.emoji.name + " " : ""}${o.label}`)));
        select.addEventListener("change", () => select.value && post("/api/select",
          { member: S.me, message_id: message.id, custom_id: item.custom_id, values: [select.value] }));
        line.append(select);
      }
    }
    box.append(line);
  }
  return box;
}

function renderReactions(message) {
  const list = message.reactions || [];
  if (!list.length) return null;
  const users = message.reaction_users || {};
  const box = el("div", { class: "reactions" });
  for (const reaction of list) {
    const emoji = reaction.emoji.id ? `${reaction.emoji.name}:${reaction.emoji.id}` : reaction.emoji.name;
    const who = users[emoji] || [];
    const mine = who.includes(S.me);
    const names = who.map((id) => (memberById(id) || {}).display_name || (S.bot && S.bot.id === id ? S.bot.username : id));
    box.append(el("button", {
      class: `reaction${mine ? " me" : ""}`, type: "button", title: `${names.join(", ")} reacted with ${emoji}`,
      dataset: { emoji }, onclick: () => toggleReaction(message.id, emoji),
    }, emojiNode(reaction.emoji.name), el("span", { class: "count" }, reaction.count)));
  }
  return box;
}

function messageKey(message, grouped) {
  // Re-render a message only when something the viewer sees changed (keeps images from reloading).
  return JSON.stringify([grouped, S.me, message.content, message.flags, message.edited_timestamp, message.embeds,
    message.attachments.map((a) => a.id), message.components, message.reaction_users, message.reactions]);
}

let scrollPinned = true;

function render() {
  const list = $("messages");
  const wasPinned = scrollPinned;
  const shown = [...S.messages.values()].filter(visible).sort((a, b) => cmpId(a.id, b.id));
  const wanted = new Set();
  let previous = null;
  const nodes = [];
  for (const message of shown) {
    const grouped = previous !== null && previous.author.id === message.author.id && !message.interaction_metadata
      && !(previous.flags & EPHEMERAL) && !(message.flags & EPHEMERAL)
      && new Date(message.timestamp) - new Date(previous.timestamp) < 7 * 60 * 1000;
    const key = messageKey(message, grouped);
    let entry = S.rendered.get(message.id);
    if (!entry || entry.key !== key) {
      const node = renderMessage(message, grouped);
      if (entry) entry.el.replaceWith(node);
      entry = { key, el: node };
      S.rendered.set(message.id, entry);
    }
    wanted.add(message.id);
    nodes.push(entry.el);
    previous = message;
  }
  for (const [id, entry] of S.rendered) {
    if (!wanted.has(id)) { entry.el.remove(); S.rendered.delete(id); }
  }
  let anchor = $("welcome");
  for (const node of nodes) {
    if (anchor.nextSibling !== node) anchor.after(node);
    anchor = node;
  }
  if (wasPinned) stickToBottom(true);
}

function stickToBottom(force = false) {
  if (force || scrollPinned) {
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }
}

function renderChrome() {
  const channel = S.channels.find((c) => c.id === S.channel) || S.channels[0];
  if (!channel) return;
  $("guild-name").textContent = S.guild ? S.guild.name : "";
  $("guild-icon").textContent = S.guild ? S.guild.name.split(/\s+/).map((w) => w[0]).join("").slice(0, 3) : "";
  $("guild-icon").title = S.guild ? S.guild.name : "";
  $("channel-name").textContent = channel.name;
  $("channel-topic").textContent = channel.nsfw ? "Age-restricted channel (NSFW)" : channel.topic || "";
  $("composer-input").placeholder = `Message #${channel.name} — or type / for commands (/imagine a red fox, /queue, /history)`;
  $("welcome").replaceChildren(el("div", { class: "big-hash" }, "#"), el("h1", {}, `Welcome to #${channel.name}!`),
    el("p", {}, `This is the start of the #${channel.name} channel. Use /imagine below to ask ${S.bot ? S.bot.username : "the bot"} for images.`));

  const channels = $("channels");
  channels.replaceChildren(...S.channels.map((c) => el("li", {
    class: `channel${c.id === S.channel ? " active" : ""}`, dataset: { channel: c.id, name: c.name },
    onclick: () => switchChannel(c.id),
  }, el("span", { class: "hash" }, "#"), c.name,
  c.nsfw ? el("span", { class: "tag" }, "NSFW") : S.unread.has(c.id) ? el("span", { class: "unread" }) : null)));

  const me = memberById(S.me);
  if (me) {
    $("me-avatar").replaceWith(Object.assign(avatar({ id: me.id, username: me.username }), { id: "me-avatar" }));
    $("me-name").textContent = me.display_name;
    $("me-roles").textContent = memberLabel(me) || "member";
  }
  const picker = $("member-picker");
  const people = humanMembers();
  if (picker.options.length !== people.length) {
    picker.replaceChildren(...people.map((m) => el("option", { value: m.id }, `${m.username}${memberLabel(m) ? ` (${memberLabel(m)})` : ""}`)));
  }
  picker.value = S.me;

  const groups = new Map();
  for (const m of S.members) {
    const group = m.bot ? "Bots" : m.admin ? "Admin" : m.roles.includes("Artist") ? "Artist" : m.owner ? "Owner" : "Members";
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(m);
  }
  const order = ["Owner", "Admin", "Artist", "Members", "Bots"];
  const list = $("member-list");
  list.replaceChildren();
  for (const name of order) {
    const items = groups.get(name);
    if (!items) continue;
    list.append(el("div", { class: "member-group" }, `${name} — ${items.length}`));
    for (const m of items) {
      const cls = m.admin ? "role-admin" : m.roles.includes("Artist") ? "role-artist" : m.owner ? "role-owner" : "";
      list.append(el("div", {
        class: `member${m.id === S.me ? " current" : ""}`, title: m.bot ? "the bot" : `Act as ${m.username}`,
        dataset: { member: m.username }, onclick: () => !m.bot && switchMember(m.id),
      }, avatar({ id: m.id, username: m.username, bot: m.bot }), el("span", { class: `name ${cls}` }, m.display_name),
      m.bot ? el("span", { class: "bot-tag" }, "App") : m.id === S.me ? el("span", { class: "you" }, "you") : null));
    }
  }
  renderInfo();
}

function memberLabel(m) {
  const labels = [];
  if (m.owner) labels.push("owner");
  if (m.admin) labels.push("admin");
  for (const role of m.roles) if (role !== "Admin") labels.push(role.toLowerCase());
  return labels.join(", ");
}

function humanMembers() {
  const rank = (m) => (m.admin ? 0 : m.owner ? 3 : 1);
  return S.members.filter((m) => !m.bot).sort((a, b) => rank(a) - rank(b) || a.username.localeCompare(b.username));
}

function renderInfo() {
  const info = S.info || {};
  const limits = info.limits || {};
  const d = info.defaults || {};
  const windowText = limits.window_seconds >= 3600 ? `${+(limits.window_seconds / 3600).toFixed(1)} h`
    : `${Math.round((limits.window_seconds || 0) / 60)} min`;
  if (info.starting) {
    $("sidebar-info").replaceChildren(el("p", {}, "Starting the bot…"));
  } else {
    $("sidebar-info").replaceChildren(
      el("p", {}, "Model: ", el("b", {}, info.model || "?"), info.device ? ` on ${info.device}` : ""),
      el("p", {}, "Limits per member: ", el("b", {}, `${limits.images_per_window} images / ${windowText}`), ", ",
        el("b", {}, `${limits.max_queued_per_user} queued`), ". Switch members below to see them apply."),
      el("p", {}, `Defaults: ${d.width}×${d.height}, ${d.steps} steps.`));
  }

  const banners = $("banners");
  banners.replaceChildren();
  const add = (kind, icon, title, howTo, details) => {
    const key = `banner:${title}`;
    if (S.dismissed.has(key)) return;
    banners.append(el("div", { class: `banner ${kind}`, dataset: { testid: `banner-${kind}` } },
      emojiNode(icon, "icon"),
      el("div", { class: "text" }, el("strong", {}, title), " ", el("span", { html: bannerHtml(howTo) }),
        details ? el("details", {}, el("summary", {}, "Why?"), el("div", { html: bannerHtml(details) })) : null),
      el("button", { title: "Dismiss", onclick: () => { S.dismissed.add(key); renderInfo(); } }, "✕")));
  };
  if (info.starting) {
    add("info", "⏳", "Starting:", `loading the model '${info.configured_model}' and connecting the bot. `
      + "This page updates by itself when it is ready.", null);
  } else if (info.is_fallback) {
    add("warning", "⚠️", `'${info.configured_model}' could not be loaded, so the built-in 'tiny' test model runs: `
      + "its images are random patterns, not pictures.", info.how_to || "", info.banner || "");
  } else if (info.note) {
    add("info", "ℹ️", "Test model:", info.note, null);
  }
}

function bannerHtml(text) {
  return escapeHtml(text).replace(/(generation\.[a-z_]+|config\.yaml|README\.md|fallback_to_tiny: true)/g, "<code>$1</code>");
}

// ------------------------------------------------------------------ state from the server

function applyState(state) {
  S.guild = state.guild;
  S.channels = state.channels;
  S.members = state.members;
  S.commands = state.commands;
  S.bot = state.bot;
  S.info = state.info || {};
  S.messages = new Map(state.messages.map((m) => [m.id, m]));
  for (const entry of S.rendered.values()) entry.el.remove();
  S.rendered.clear();
  const saved = localStorage.getItem("playground.member");
  const people = humanMembers();
  if (!S.me || !memberById(S.me)) S.me = (people.find((m) => m.id === saved || m.username === saved) || people[0] || {}).id;
  if (!S.channel || !S.channels.some((c) => c.id === S.channel)) {
    const fromHash = decodeURIComponent(location.hash.slice(1));
    S.channel = (S.channels.find((c) => c.name === fromHash) || S.channels[0] || {}).id;
  }
  fillImagineDefaults();
  renderChrome();
  render();
}

function applyEvent(event) {
  const message = event.message;
  if (event.type === "interaction_response") {
    S.acked.add(event.interaction_id);
    clearTimeout(S.pending.get(event.interaction_id));
    S.pending.delete(event.interaction_id);
  }
  switch (event.type) {
    case "message_create":
    case "message_update":
    case "reaction_add":
    case "reaction_remove":
    case "interaction_response":
      if (message && message.id) {
        if (message.deleted) S.messages.delete(message.id);
        else S.messages.set(message.id, message);
        if (message.channel_id !== S.channel && event.type === "message_create" && visibleAnywhere(message)) {
          S.unread.add(message.channel_id);
          renderChrome();
        }
      }
      break;
    case "message_delete":
      S.messages.delete(event.id);
      break;
    default:
      return;
  }
  render();
}

function visibleAnywhere(message) {
  return !(message.flags & EPHEMERAL) || message.visible_to === S.me;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  S.ws = ws;
  setConn("connecting", "connecting…");
  ws.onopen = () => { S.retry = 0; setConn("open", "live"); };
  ws.onmessage = (msg) => {
    const data = JSON.parse(msg.data);
    if (data.type === "state") applyState(data);
    else if (data.type !== "pong") applyEvent(data);
  };
  ws.onclose = () => {
    setConn("closed", "disconnected — retrying");
    const delay = Math.min(8000, 500 * 2 ** S.retry++);
    setTimeout(connect, delay);
  };
}

function setConn(state, text) {
  const node = $("conn-status");
  node.dataset.state = state;
  node.textContent = text;
}

// ------------------------------------------------------------------ actions

async function post(path, body) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  } catch (err) {
    showError(`The playground server is not reachable (${err.message}).`);
    return null;
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    showError(data.error || `HTTP ${response.status}`);
    return null;
  }
  hideError();
  if (data.interaction_id) watchInteraction(data.interaction_id);
  return data;
}

function watchInteraction(id) {
  // Like Discord's client: an interaction the bot does not acknowledge within 3 s has failed.
  if (S.acked.has(id)) return;
  S.pending.set(id, setTimeout(() => {
    S.pending.delete(id);
    showError(`${S.bot ? S.bot.username : "The bot"} did not respond: the interaction was not acknowledged within 3 s.`);
  }, 3500));
}

function showError(text) {
  const box = $("composer-error");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(hideError, 12000);
}

function hideError() {
  $("composer-error").hidden = true;
}

function toggleReaction(messageId, emoji) {
  const message = S.messages.get(messageId);
  const mine = message && (message.reaction_users || {})[emoji] && message.reaction_users[emoji].includes(S.me);
  return post("/api/react", { member: S.me, message_id: messageId, emoji, remove: Boolean(mine) });
}

async function pressButton(messageId, customId, button) {
  button.classList.add("pending");
  try {
    await post("/api/button", { member: S.me, message_id: messageId, custom_id: customId });
  } finally {
    setTimeout(() => button.classList.remove("pending"), 600);
  }
}

function switchChannel(id) {
  S.channel = id;
  S.unread.delete(id);
  const channel = S.channels.find((c) => c.id === id);
  if (channel) history.replaceState(null, "", `#${channel.name}`);
  scrollPinned = true;
  renderChrome();
  render();
}

function switchMember(id) {
  S.me = id;
  const member = memberById(id);
  if (member) localStorage.setItem("playground.member", member.username);
  hideError();
  renderChrome();
  render();
}

const IMAGINE_FIELDS = ["negative_prompt", "seed", "steps", "width", "height", "count", "guidance", "scheduler",
  "aspect", "model", "style", "strength"];
const CHOICE_FIELDS = ["scheduler", "aspect", "model", "style"];

function fileBase64(file) {
  // An attachment travels to /api/command as base64 (the page's API is JSON), like a client's upload.
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function imagineOptions() {
  const options = { prompt: $("imagine-prompt").value.trim() };
  for (const name of IMAGINE_FIELDS) {
    const input = $(`opt-${name}`);
    const value = input.value.trim();
    if (value !== "" && value !== input.dataset.default) options[name] = value;
  }
  const file = $("opt-image").files[0];
  if (file) options.image = { filename: file.name, data: await fileBase64(file) };
  return options;
}

async function submitImagine(event) {
  event.preventDefault();
  const options = await imagineOptions();
  if (!options.prompt) { showError("Type a prompt first."); return; }
  const button = $("imagine-submit");
  button.disabled = true;
  scrollPinned = true;
  try {
    const result = await post("/api/command", { member: S.me, channel: S.channel, name: "imagine", options });
    if (result) $("imagine-prompt").select();
  } finally {
    button.disabled = false;
  }
}

async function submitComposer(event) {
  event.preventDefault();
  const input = $("composer-input");
  const text = input.value.trim();
  if (!text) return;
  const popup = $("command-popup");
  if (!popup.hidden && text.startsWith("/") && !text.includes(" ")) {
    const active = popup.querySelector(".command-item.active");
    if (active) { active.click(); return; }
  }
  scrollPinned = true;
  const result = text.startsWith("/")
    ? await post("/api/command", { member: S.me, channel: S.channel, text })
    : await post("/api/message", { member: S.me, channel: S.channel, content: text });
  if (result) { input.value = ""; updatePopup(); }
}

function fillImagineDefaults() {
  const d = (S.info && S.info.defaults) || {};
  const set = (name, value, attrs = {}) => {
    const input = $(`opt-${name}`);
    if (value === undefined || value === null) return;
    if (!input.value || input.value === input.dataset.default) input.value = value;
    input.dataset.default = String(value);
    for (const [k, v] of Object.entries(attrs)) if (v !== undefined) input.setAttribute(k, v);
  };
  set("steps", d.steps, { max: d.max_steps });
  set("width", d.width, { min: d.min_size, max: d.max_size });
  set("height", d.height, { min: d.min_size, max: d.max_size });
  set("guidance", d.guidance);
  const imagine = S.commands.find((c) => c.name === "imagine");
  for (const option of (imagine && imagine.options) || []) {
    // The synced bounds, so the browser refuses what Discord's client would refuse.
    const input = document.getElementById(`opt-${option.name}`);
    if (!input) continue;
    if (option.min_value !== undefined && option.min_value !== null) input.min = option.min_value;
    if (option.max_value !== undefined && option.max_value !== null) input.max = option.max_value;
    if (option.max_length) input.maxLength = option.max_length;
  }
  for (const name of CHOICE_FIELDS) {
    // The synced choices (samplers, aspect presets, the configured models and styles); none: the field hides.
    const option = imagine && (imagine.options || []).find((o) => o.name === name);
    const select = $(`opt-${name}`);
    const choices = (option && option.choices) || [];
    select.closest("label").hidden = !choices.length;
    if (select.options.length <= 1) {
      for (const choice of choices) select.append(el("option", { value: choice.value }, choice.name));
    }
  }
}

// ------------------------------------------------------------------ slash command popup

function commandSignature(command) {
  const parts = [];
  for (const option of command.options || []) {
    if (option.type === 1 || option.type === 2) parts.push(option.name);
    else parts.push(option.required ? `${option.name}:` : `[${option.name}:]`);
  }
  return parts.join(" ");
}

function updatePopup() {
  const input = $("composer-input");
  const popup = $("command-popup");
  const text = input.value;
  if (!text.startsWith("/") || text.includes(" ")) { popup.hidden = true; return; }
  const typed = text.slice(1).toLowerCase();
  const matches = S.commands.filter((c) => c.name.startsWith(typed));
  if (!matches.length) { popup.hidden = true; return; }
  S.popupIndex = Math.min(S.popupIndex, matches.length - 1);
  popup.replaceChildren(el("div", { class: "title" }, `Commands matching /${typed}`),
    ...matches.map((c, i) => el("div", {
      class: `command-item${i === S.popupIndex ? " active" : ""}`,
      onclick: () => {
        if (c.name === "imagine") {
          input.value = "";
          popup.hidden = true;
          $("imagine-prompt").focus();
          return;
        }
        input.value = `/${c.name} `;
        popup.hidden = true;
        input.focus();
      },
    }, el("span", { class: "name" }, `/${c.name}`), el("span", { class: "opts" }, commandSignature(c)),
    el("span", { class: "desc" }, c.description || ""))));
  popup.hidden = false;
}

function openViewer(url) {
  const viewer = el("div", { class: "viewer", onclick: () => viewer.remove() }, el("img", { src: url, alt: "" }));
  document.body.append(viewer);
}

// ------------------------------------------------------------------ wiring

function init() {
  $("home-icon").append(emojiNode("🎨", "avatar-emoji"));
  $("imagine-form").addEventListener("submit", submitImagine);
  $("composer").addEventListener("submit", submitComposer);
  $("member-picker").addEventListener("change", (e) => switchMember(e.target.value));
  $("options-toggle").addEventListener("click", () => {
    const box = $("imagine-options");
    box.hidden = !box.hidden;
    $("options-toggle").setAttribute("aria-expanded", String(!box.hidden));
    $("options-toggle").textContent = box.hidden ? "Options ▾" : "Options ▴";
  });
  const input = $("composer-input");
  input.addEventListener("input", () => { S.popupIndex = 0; updatePopup(); });
  input.addEventListener("keydown", (e) => {
    const popup = $("command-popup");
    if (popup.hidden) return;
    const items = popup.querySelectorAll(".command-item");
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      S.popupIndex = (S.popupIndex + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      updatePopup();
    } else if (e.key === "Tab") {
      e.preventDefault();
      if (items[S.popupIndex]) items[S.popupIndex].click();
    } else if (e.key === "Escape") {
      popup.hidden = true;
    }
  });
  $("messages").addEventListener("scroll", () => {
    const list = $("messages");
    scrollPinned = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  });
  $("messages").addEventListener("click", (e) => {
    const target = e.target.closest(".jump, .spoiler-text");
    if (!target) return;
    e.preventDefault();
    if (target.classList.contains("spoiler-text")) { target.classList.add("revealed"); return; }
    if (target.dataset.channel && target.dataset.channel !== S.channel) switchChannel(target.dataset.channel);
    const node = target.dataset.message && document.getElementById(`m-${target.dataset.message}`);
    if (node) {
      node.scrollIntoView({ block: "center" });
      node.classList.remove("flash");
      void node.offsetWidth;
      node.classList.add("flash");
    }
  });
  // Images and edits change heights after rendering: stay at the newest message unless the reader scrolled up.
  new ResizeObserver(() => stickToBottom()).observe($("message-stack"));
  // <t:...:R> timestamps ("in 59 minutes") keep counting, as in Discord.
  setInterval(() => {
    for (const node of document.querySelectorAll(".ts-rel")) node.textContent = relativeTime(Number(node.dataset.ts));
  }, 10000);
  setInterval(() => { if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send("ping"); }, 25000);
  connect();
}

document.addEventListener("DOMContentLoaded", init);
