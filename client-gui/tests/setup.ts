// Tauri's IPC mock registers callbacks with window.crypto.getRandomValues;
// give jsdom Node's Web Crypto where it has none. (The module name is a
// variable so the typecheck needs no Node typings.)
if (!window.crypto || typeof window.crypto.getRandomValues !== "function") {
  const name = "node:crypto";
  const { webcrypto } = (await import(/* @vite-ignore */ name)) as { webcrypto: Crypto };
  Object.defineProperty(window, "crypto", { value: webcrypto, configurable: true });
}

export {};
