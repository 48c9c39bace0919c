// The Overview page: activity of every rule of one environment.
import "./shell.js";
import { activityPanel } from "./activity.js";

const container = document.getElementById("overview-activity");
const environment = container.dataset.environment;
activityPanel(container, {
  path: `/v1/activity?environment=${encodeURIComponent(environment)}`,
  idPrefix: "overview-activity",
});

for (const radio of document.querySelectorAll("#overview-filters input[name=environment]")) {
  radio.addEventListener("change", () => {
    location.search = `?environment=${encodeURIComponent(radio.value)}`;
  });
}
