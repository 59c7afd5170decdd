// Saves a JSON document the way Node users are usually told to: write a temp file, then
// rename it over the target. No fsync of the file, none of the directory.
// usage: node save_naive.js DIR COUNT
const fs = require("fs");
const path = require("path");
const [dir, count] = [process.argv[2], Number(process.argv[3])];
const target = path.join(dir, "data.json");
for (let i = 1; i <= count; i++) {
  const doc = { version: i, items: Array.from({ length: 40 * i }, (_, k) => `item ${k}`) };
  const tmp = target + ".tmp";
  fs.writeFileSync(tmp, JSON.stringify(doc));
  fs.renameSync(tmp, target);
  fs.writeSync(1, `saved ${i}\n`);
}
