// Entry: hash router; every page renders into #app and any error is shown in place, never a blank page.
import "./style.css";
import { api, apiKey, type Schemas, setApiKey } from "./api/client";
import { circuitPage } from "./pages/circuit";
import { comparePage } from "./pages/compare";
import { landingPage } from "./pages/landing";
import { jobsPage } from "./pages/jobs";
import { modelPage, modelsPage } from "./pages/models";
import { transcoderPage, transcodersBox } from "./pages/transcoders";
import { currentRoute } from "./router";
import { errorBox, h } from "./util";

const app = document.getElementById("app") as HTMLElement;
let renderSeq = 0;

async function render(): Promise<void> {
  const seq = ++renderSeq;
  const page = h("div", { class: "page" });
  app.replaceChildren(page);
  const { path } = currentRoute();
  try {
    if (path.length === 0) await landingPage(page);
    else if (path[0] === "models" && path.length === 1) await modelsPage(page);
    else if (path[0] === "models") await modelPage(page, positiveId(path[1]));
    else if (path[0] === "circuits" && path.length === 2) await circuitPage(page, positiveId(path[1]));
    else if (path[0] === "jobs") await jobsPage(page);
    else if (path[0] === "transcoders" && path.length === 2) await transcoderPage(page, positiveId(path[1]));
    else if (path[0] === "transcoders") page.append(await transcodersBox());
    else if (path[0] === "compare") {
      const q = currentRoute().query;
      await comparePage(page, positiveId(q.get("a") ?? ""), positiveId(q.get("b") ?? ""));
    }
    else page.append(h("h1", {}, "Not found"), h("p", {}, `No page at #/${path.join("/")}. `, h("a", { href: "#/models" }, "Models")));
  } catch (e) {
    if (seq === renderSeq) page.append(errorBox(e));
  }
}

function positiveId(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new Error(`not an id: ${s}`);
  return n;
}

// Route changes re-render; query-only updates made by the page itself use replaceState (no event).
window.addEventListener("hashchange", () => void render());
window.addEventListener("unhandledrejection", (ev) => app.prepend(errorBox(ev.reason)));
window.addEventListener("error", (ev) => app.prepend(errorBox(ev.error ?? ev.message)));

const keyInput = document.getElementById("api-key") as HTMLInputElement;
keyInput.value = apiKey();
keyInput.addEventListener("change", () => {
  setApiKey(keyInput.value.trim());
  void showSession();
});

/** "signed in (this browser)" once `circuits serve`'s printed URL set the sign-in cookie; the key box
 * (for a server on another host) stays one click away. */
async function showSession(): Promise<void> {
  const label = document.getElementById("apikey-label") as HTMLElement;
  const status = document.getElementById("session") as HTMLElement;
  const s = await api<Schemas["SessionRead"]>("/session").catch(() => null);
  const cookie = s?.via === "cookie";
  status.hidden = !cookie;
  label.hidden = cookie;
}
document.getElementById("use-key")?.addEventListener("click", () => {
  (document.getElementById("apikey-label") as HTMLElement).hidden = false;
  (document.getElementById("session") as HTMLElement).hidden = true;
  keyInput.focus();
});
void showSession();

void render();
