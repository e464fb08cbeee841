// The page's entry point: sign in from the link's #token=, a kept session, or the form.
//
// The token arrives in the URL fragment, which the browser never sends to the server; it is
// moved to sessionStorage (this tab only) and the fragment is dropped from the address bar
// and the history at once.

import { ChatPage, deviceId } from "./view.js";

const TOKEN_KEY = "messenger.token";

function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) history.replaceState(null, "", location.pathname + location.search);
  return token;
}

let started = false;

function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  if (started) {
    location.reload(); // a fresh page for a fresh session (after a refused token)
    return;
  }
  started = true;
  new ChatPage({ token, device: deviceId() }).start();
}

document.getElementById("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (!value) return;
  if (typeof Notification !== "undefined" && Notification.permission === "default") {
    Notification.requestPermission(); // asked on the click: browsers want a user gesture
  }
  signIn(value);
});

const token = tokenFromFragment() ?? sessionStorage.getItem(TOKEN_KEY);
if (token) signIn(token);
