// Validates custom resources that kubernetes-validate has no schema for, against the schemas of
// @kubernetes-models/istio (Istio's CRDs) and @kubernetes-models/envoy-gateway (Envoy
// Gateway's API types):
//
//   node deploy/tools/validate-crds.mjs FILE...
//
// Every YAML document of every FILE must be a kind listed in KINDS and pass its schema. The
// packages' validators ignore fields the schema does not know (the API server would prune them
// silently, or, with kubectl's default strict field validation, refuse them), so this also
// refuses unknown fields: a field is known when its schema rejects a value of no JSON type in
// its place. Free-form fields (FREE_FORM) are taken as known and not descended into; the
// filter's own parser checks them (`cargo test -p ixproxy-envoy-config`). One line per
// document; exit 1 on any failure.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";
import { EnvoyExtensionPolicy } from "@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy";

const KINDS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": WasmPlugin,
  "gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy": EnvoyExtensionPolicy,
};

// Paths (array indices left out) whose content is the user's, not the CRD's.
const FREE_FORM = new Set(["spec.pluginConfig", "spec.wasm.config"]);

/** The schema errors for `doc`, as `path: message` strings (empty when valid). */
function schemaErrors(Model, doc) {
  try {
    new Model(doc).validate();
    return [];
  } catch (e) {
    if (!Array.isArray(e.errors)) throw e;
    return e.errors.map((err) => `${err.instancePath || "/"}: ${err.message}`);
  }
}

/** Whether the schema has something to say about the field at `path` (a list of keys). */
function isKnown(Model, doc, path) {
  const probe = structuredClone(doc);
  let node = probe;
  for (const key of path.slice(0, -1)) node = node[key];
  node[path[path.length - 1]] = Symbol("not a JSON value");
  const at = "/" + path.join("/");
  try {
    new Model(probe).validate();
    return false;
  } catch (e) {
    if (!Array.isArray(e.errors)) throw e;
    return e.errors.some((err) => err.instancePath === at || err.instancePath.startsWith(at + "/"));
  }
}

/** The paths of fields in `doc` that its schema does not know. */
function unknownFields(Model, doc) {
  const unknown = [];
  // Depth-first over the document itself: finite, and each probe is one validation.
  const walk = (node, path) => {
    if (Array.isArray(node)) {
      node.forEach((item, i) => walk(item, [...path, i]));
    } else if (node !== null && typeof node === "object") {
      for (const key of Object.keys(node)) {
        const child = [...path, key];
        // A free-form field accepts any value, so the probe cannot tell; it is known.
        if (FREE_FORM.has(child.filter((k) => typeof k === "string").join("."))) continue;
        if (isKnown(Model, doc, child)) walk(node[key], child);
        else unknown.push(child.join("."));
      }
    }
  };
  for (const key of Object.keys(doc)) {
    if (key === "apiVersion" || key === "kind") continue;
    walk(doc[key], [key]);
  }
  return unknown;
}

let failed = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const [index, parsed] of docs.entries()) {
    const where = docs.length > 1 ? `${file} (document ${index + 1})` : file;
    if (parsed.errors.length > 0) {
      console.log(`FAIL ${where}: YAML: ${parsed.errors[0].message.split("\n")[0]}`);
      failed++;
      continue;
    }
    const doc = parsed.toJS();
    if (doc === null) continue;
    const kind = `${doc.apiVersion}/${doc.kind}`;
    const Model = KINDS[kind];
    const problems = Model
      ? [
          ...schemaErrors(Model, doc),
          ...unknownFields(Model, doc).map((path) => `${path}: unknown field`),
        ]
      : [`no schema for ${kind} here (known: ${Object.keys(KINDS).join(", ")})`];
    checked++;
    if (problems.length > 0) {
      console.log(`FAIL ${where}: ${kind}: ${problems.join("; ")}`);
      failed++;
    } else {
      console.log(`ok   ${where}: ${kind}`);
    }
  }
}
if (checked === 0) {
  console.log("validate-crds: no document checked");
  process.exit(1);
}
process.exit(failed > 0 ? 1 : 0);
