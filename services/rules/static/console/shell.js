// What every signed-in page has: the sign-out button.
import { api } from "./api.js";

const signOut = document.getElementById("sign-out");
if (signOut) {
  signOut.addEventListener("click", async () => {
    try {
      await api("DELETE", "/v1/auth/session");
    } finally {
      location.assign("/console/login");
    }
  });
}
