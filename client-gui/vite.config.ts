/// <reference types="vitest/config" />
import { defineConfig } from "vite";

// Tauri serves dist/ from its own scheme: relative paths, no CDN, no
// inline scripts (the window's CSP is default-src 'self').
export default defineConfig({
  base: "./",
  clearScreen: false,
  server: {
    port: 5173,
    strictPort: true,
  },
  envPrefix: ["VITE_", "TAURI_ENV_"],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // WebKitGTK 2.40+ (Safari 16 era).
    target: ["es2021", "safari15"],
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
  test: {
    environment: "jsdom",
    include: ["tests/**/*.test.ts"],
    setupFiles: ["tests/setup.ts"],
  },
});
