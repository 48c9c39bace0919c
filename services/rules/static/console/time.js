// Dates in the organisation's timezone. The API speaks timezone-aware ISO 8601;
// <input type="datetime-local"> speaks wall-clock time with no zone. These turn
// one into the other for a named IANA zone, whatever the browser's own zone is.

function wallClock(date, timeZone) {
  const format = new Intl.DateTimeFormat("en-CA", {
    timeZone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
  });
  return Object.fromEntries(format.formatToParts(date).map((part) => [part.type, part.value]));
}

// Minutes the zone is ahead of UTC at `date`.
function offsetMinutes(date, timeZone) {
  const p = wallClock(date, timeZone);
  const asUtc = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
  return (asUtc - Math.floor(date.getTime() / 1000) * 1000) / 60000;
}

// "2026-12-01T09:30" in `timeZone` -> "2026-12-01T08:30:00.000Z" (null when empty).
export function fromLocalInput(value, timeZone) {
  if (!value) return null;
  const [day, time] = value.split("T");
  const [year, month, date] = day.split("-").map(Number);
  const [hour, minute] = time.split(":").map(Number);
  const wall = Date.UTC(year, month - 1, date, hour, minute);
  // Twice: the first guess may sit on the other side of a daylight-saving change.
  let instant = wall - offsetMinutes(new Date(wall), timeZone) * 60000;
  instant = wall - offsetMinutes(new Date(instant), timeZone) * 60000;
  return new Date(instant).toISOString();
}

// ISO 8601 instant -> "YYYY-MM-DDTHH:MM" wall-clock time in `timeZone`.
export function toLocalInput(iso, timeZone) {
  if (!iso) return "";
  const p = wallClock(new Date(iso), timeZone);
  return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}`;
}

export function formatDate(iso, timeZone) {
  if (!iso) return "";
  return new Intl.DateTimeFormat("en-GB", {
    timeZone,
    dateStyle: "medium",
    timeStyle: "short",
  }).format(new Date(iso));
}

export function formatPeriod(rule, timeZone) {
  const start = rule.startsAt ? formatDate(rule.startsAt, timeZone) : "now";
  const end = rule.endsAt ? formatDate(rule.endsAt, timeZone) : "no end";
  return `${start} – ${end}`;
}

// A rule's expiry policy in words (a redeem rule's points are never its own to expire).
export function formatExpiry(rule, timeZone) {
  if (rule.pointsExpireAfterDays != null) {
    const days = rule.pointsExpireAfterDays;
    return `Points expire ${days} ${days === 1 ? "day" : "days"} after they are awarded`;
  }
  if (rule.pointsExpireAt) return `Points expire on ${formatDate(rule.pointsExpireAt, timeZone)}`;
  return rule.type === "earn" ? "Points never expire" : "";
}
