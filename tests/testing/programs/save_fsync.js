// The same saves with the whole durable sequence: write the temp file, fsync it, rename it
// over the target, fsync the directory. usage: node save_fsync.js DIR COUNT
const fs = require("fs");
const path = require("path");
const [dir, count] = [process.argv[2], Number(process.argv[3])];
const target = path.join(dir, "data.json");
for (let i = 1; i <= count; i++) {
  const doc = { version: i, items: Array.from({ length: 40 * i }, (_, k) => `item ${k}`) };
  const tmp = target + ".tmp";
  const fd = fs.openSync(tmp, "w");
  fs.writeSync(fd, JSON.stringify(doc));
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(tmp, target);
  const dfd = fs.openSync(dir, "r");
  fs.fsyncSync(dfd);
  fs.closeSync(dfd);
  fs.writeSync(1, `saved ${i}\n`);
}
