// Verify a Sigstore bundle with @sigstore/verify, the way a platform team would check our images.
//
//   node verify.mjs BUNDLE.json PUBLIC-KEY.pem sha256:<hex>
//
// The public key is the only trust material (no Fulcio, no Rekor, no timestamp authority: every
// threshold is 0). The verifier checks the DSSE signature over the statement; that the statement
// is about this image is the caller's to check, so its subject must name the expected digest.
// Exits 0 when the bundle verifies, 1 (with the reason on stderr) when it does not.
import { createPublicKey } from "node:crypto";
import { readFileSync } from "node:fs";

import { bundleFromJSON } from "@sigstore/bundle";
import { TrustedRoot } from "@sigstore/protobuf-specs";
import { Verifier, toSignedEntity, toTrustMaterial } from "@sigstore/verify";

const [bundlePath, keyPath, digest] = process.argv.slice(2);
if (!bundlePath || !keyPath || !/^sha256:[0-9a-f]{64}$/.test(digest ?? "")) {
  console.error("usage: node verify.mjs BUNDLE.json PUBLIC-KEY.pem sha256:<hex>");
  process.exit(2);
}

try {
  const bundle = bundleFromJSON(JSON.parse(readFileSync(bundlePath, "utf8")));
  const hint = bundle.verificationMaterial.content.publicKey?.hint;
  if (!hint) throw new Error("the bundle names no public key (verificationMaterial.publicKey.hint)");
  const der = createPublicKey(readFileSync(keyPath)).export({ type: "spki", format: "der" });
  const trust = toTrustMaterial(TrustedRoot.fromJSON({}), { [hint]: { rawBytes: der } });
  const verifier = new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, tsaThreshold: 0 });
  verifier.verify(toSignedEntity(bundle));

  const envelope = bundle.content.dsseEnvelope;
  const statement = JSON.parse(Buffer.from(envelope.payload).toString("utf8"));
  const subjects = (statement.subject ?? []).map((subject) => "sha256:" + subject.digest?.sha256);
  if (!subjects.includes(digest)) {
    throw new Error(`the statement is about ${subjects.join(", ") || "nothing"}, not ${digest}`);
  }
  console.log(`verified: ${digest} (${statement.predicateType})`);
} catch (error) {
  console.error(`refused: ${error.message ?? error}`);
  process.exit(1);
}
