// Validate one .glb/.gltf with Khronos' glTF-Validator; prints the JSON report on stdout.
// Usage: node validate.js FILE.glb   (exit 0 when the report has no errors)
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const file = process.argv[2];
const data = new Uint8Array(fs.readFileSync(file));
validator.validateBytes(data, {
  uri: path.basename(file),
  maxIssues: 200,
  externalResourceFunction: (uri) => new Promise((resolve, reject) => {
    fs.readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)), (err, buf) => err ? reject(err.toString()) : resolve(new Uint8Array(buf)));
  }),
}).then((report) => {
  process.stdout.write(JSON.stringify(report, null, 1) + "\n");
  process.exit(report.issues.numErrors > 0 ? 1 : 0);
}).catch((err) => { process.stderr.write(String(err) + "\n"); process.exit(2); });
