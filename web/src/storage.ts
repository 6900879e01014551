// localStorage that never throws: a browser that blocks storage in third-party frames (the chat
// embedded in another site, docs/operator-console.md) makes every access a SecurityError. The
// page then keeps the conversation in memory: it works, and is forgotten on reload.
const memory = new Map<string, string>();

export const safeStorage = {
  get(key: string): string | null {
    try {
      return localStorage.getItem(key);
    } catch {
      return memory.get(key) ?? null;
    }
  },
  set(key: string, value: string): void {
    try {
      localStorage.setItem(key, value);
    } catch {
      memory.set(key, value);
    }
  },
  remove(key: string): void {
    memory.delete(key);
    try {
      localStorage.removeItem(key);
    } catch {
      // Nothing stored there.
    }
  },
};
