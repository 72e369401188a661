import { defineConfig } from "vite";

// `npm run dev` proxies the API (and its schema, which the job forms are built from) to a running
// `circuits serve` on :8000.
export default defineConfig({
  server: { proxy: { "/api": "http://127.0.0.1:8000", "/openapi.json": "http://127.0.0.1:8000" } },
  build: { outDir: "dist", chunkSizeWarningLimit: 6000 },
});
