// Compiles contracts/src with the pinned solc (solc-js from npm) and writes
// each contract's ABI and bytecode to contracts/out/<Name>.json, which are
// committed: nobody needs a compiler to build Hopwire. `--check` compiles
// and fails if the committed files differ.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = path.dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes("--check");
const src = path.join(here, "src");
const out = path.join(here, "out");

const sources = {};
for (const file of fs.readdirSync(src).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: fs.readFileSync(path.join(src, file), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: "cancun",
    optimizer: { enabled: true, runs: 10000 },
    metadata: { bytecodeHash: "none", appendCBOR: false },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const findImports = (name) => {
  const file = path.join(here, "node_modules", name);
  return fs.existsSync(file) ? { contents: fs.readFileSync(file, "utf8") } : { error: `not found: ${name}` };
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

let stale = [];
fs.mkdirSync(out, { recursive: true });
for (const file of Object.keys(sources)) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    const artifact = JSON.stringify(
      {
        contractName: name,
        compiler: `solc ${solc.version()}`,
        abi: c.abi,
        bytecode: `0x${c.evm.bytecode.object}`,
        deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
      },
      null,
      2,
    ) + "\n";
    const target = path.join(out, `${name}.json`);
    if (check) {
      if (!fs.existsSync(target) || fs.readFileSync(target, "utf8") !== artifact) stale.push(target);
    } else {
      fs.writeFileSync(target, artifact);
      console.log(`wrote ${path.relative(here, target)} (${c.evm.deployedBytecode.object.length / 2} bytes deployed)`);
    }
  }
}
if (stale.length) {
  console.error(`compiled contracts differ from the committed ones: ${stale.join(", ")}\nrun: (cd contracts && npm run build)`);
  process.exit(1);
}
