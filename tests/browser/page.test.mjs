// End-to-end test of the web page of `diffuse serve` in headless Chromium (Debian's, driven by playwright-core):
// type a prompt, generate, see the image; reuse its settings; paint a mask and inpaint; pick the audio model,
// generate, and get a player and the spectrogram.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const binary = process.env.DIFFUSE_BIN
  || path.join(process.env.CARGO_TARGET_DIR || path.join(root, "target"), "debug", "diffuse");
const model = path.join(root, "tests/fixtures/models/sd1");
const audioModel = path.join(root, "tests/fixtures/audioldm/tiny");
const screenshots = process.env.DIFFUSE_SCREENSHOTS; // a folder, to look at the page

let server;
let baseUrl;
let browser;
let page;

async function startServer() {
  server = spawn(binary, ["serve", "--model", `sd1=${model}`, "--model", `audio=${audioModel}`, "--port", "0",
    "--lora-dir", path.join(root, "tests/fixtures/loras/files"),
    "--embeddings-dir", path.join(root, "tests/fixtures/embeddings/files")], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let output = "";
  for await (const chunk of server.stdout) {
    output += chunk;
    const match = output.match(/listening on (http:\/\/\S+)/);
    if (match) return match[1];
  }
  throw new Error("diffuse serve exited before listening: " + output);
}

async function shot(name) {
  if (screenshots) await page.screenshot({ path: path.join(screenshots, name + ".png"), fullPage: true });
}

before(async () => {
  baseUrl = await startServer();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync",
    ],
  });
  page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on("pageerror", (error) => { throw error; });
  await page.goto(baseUrl + "/");
  await page.waitForFunction(() => document.querySelector("#model").options.length > 0);
});

after(async () => {
  await browser?.close();
  if (server) {
    server.kill("SIGTERM");
    const [code] = await once(server, "exit");
    assert.equal(code, 0, "diffuse serve shuts down cleanly");
  }
});

test("type a prompt, generate, see the image", { timeout: 120_000 }, async () => {
  assert.equal(await page.inputValue("#model"), "sd1");
  assert.equal(await page.inputValue("#width"), "64", "the model's default size");
  await page.fill("#prompt", "a lighthouse at dusk");
  await page.fill("#steps", "4");
  await page.fill("#seed", "42");
  await page.click("#generate");
  const image = page.locator("#gallery .card img.result").first();
  await image.waitFor();
  await page.waitForFunction(() => {
    const img = document.querySelector("#gallery .card img.result");
    return img && img.complete && img.naturalWidth > 0;
  });
  const size = await image.evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  assert.deepEqual(size, [64, 64]);
  const parameters = await page.textContent("#gallery .card .parameters");
  assert.match(parameters, /^a lighthouse at dusk\nSteps: 4, .*Seed: 42, Size: 64x64/);
  assert.match(await page.textContent("#status"), /^Done in/);
  assert.equal(await page.isVisible("#preview"), true, "the live preview was shown");
  const shown = await page.evaluate(() => [document.querySelector("#preview").src,
    document.querySelector("#gallery .card img.result").src]);
  assert.equal(shown[0], shown[1], "the live area ends on the final image, not the last latent preview");
  const icon = await page.evaluate(async () => {
    const link = document.querySelector("link[rel=icon]");
    return [link.getAttribute("href"), (await fetch(link.href)).status];
  });
  assert.deepEqual(icon, ["/favicon.svg", 200]);
  assert.equal(await page.getAttribute("#progress", "value"), "1");
  await shot("generated");
});

test("the LoRAs and embeddings are listed, and a click adds one to the prompt", async () => {
  await page.fill("#prompt", "a knight");
  await page.click("#networks summary");
  await page.click("#lora-list button:has-text('kohya_attn')");
  assert.equal(await page.inputValue("#prompt"), "a knight <lora:kohya_attn:1>");
  await page.click("#embedding-list button:has-text('fixtri')");
  assert.equal(await page.inputValue("#prompt"), "a knight <lora:kohya_attn:1> fixtri");
  const embeddings = await page.locator("#embedding-list button").allTextContents();
  assert.ok(!embeddings.includes("Embedding: wide"), "an embedding that does not fit the model is not offered");
  await page.fill("#prompt", "a lighthouse at dusk");
});

test("reuse these settings", async () => {
  await page.fill("#prompt", "something else");
  await page.fill("#seed", "-1");
  await page.fill("#steps", "9");
  await page.click("#gallery .card .reuse");
  assert.equal(await page.inputValue("#prompt"), "a lighthouse at dusk");
  assert.equal(await page.inputValue("#seed"), "42");
  assert.equal(await page.inputValue("#steps"), "4");
});

test("paint a mask on a result and inpaint", { timeout: 120_000 }, async () => {
  await page.click("#gallery .card .use-input");
  await page.locator("#mask-canvas").waitFor({ state: "visible" });
  const box = await page.locator("#mask-canvas").boundingBox();
  await page.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.8, box.y + box.height * 0.8, { steps: 8 });
  await page.mouse.up();
  const painted = await page.evaluate(() => {
    const canvas = document.querySelector("#mask-canvas");
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count += 1;
    return count;
  });
  assert.ok(painted > 50, `the brush painted ${painted} pixels`);
  await page.fill("#prompt", "a red door");
  assert.equal(await page.inputValue("#strength"), "", "the API's default strength unless one is typed");
  await shot("masked");
  await page.click("#generate");
  await page.waitForFunction(() => document.querySelectorAll("#gallery .card").length === 2, null,
    { timeout: 120_000 });
  const parameters = await page.textContent("#gallery .card .parameters");
  assert.match(parameters, /^a red door\n.*Denoising strength: 1\.0/);
  await shot("inpainted");
});

test("pick the audio model, generate, play the sound and see its spectrogram", { timeout: 120_000 }, async () => {
  await page.selectOption("#model", "audio");
  assert.equal(await page.isVisible("#width"), false, "an audio model takes no image size");
  assert.equal(await page.isVisible("#input-image"), false, "nor an input image");
  assert.equal(await page.inputValue("#audio-length"), "0.016", "the model's default length");
  assert.equal(await page.inputValue("#guidance"), "2.5", "AudioLDM's default guidance");
  await page.fill("#prompt", "rain on a tin roof");
  await page.fill("#audio-length", "0.02");
  await page.fill("#steps", "3");
  await page.fill("#seed", "42");
  await page.click("#generate");
  await page.waitForFunction(() => document.querySelectorAll("#gallery .card").length === 3, null,
    { timeout: 120_000 });
  const card = page.locator("#gallery .card").first();
  assert.equal(await card.locator("audio").isVisible(), true, "a player for the sound");
  const duration = await card.locator("audio").evaluate((audio) => new Promise((resolve, reject) => {
    if (audio.readyState >= 1) resolve(audio.duration);
    audio.addEventListener("loadedmetadata", () => resolve(audio.duration));
    audio.addEventListener("error", () => reject(new Error("the browser cannot play the WAV")));
  }));
  assert.ok(Math.abs(duration - 0.02) < 1e-3, `the WAV lasts ${duration} s`);
  await page.waitForFunction(() => {
    const img = document.querySelector("#gallery .card img.result");
    return img && img.complete && img.naturalWidth > 0;
  });
  const size = await card.locator("img.result").evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  assert.deepEqual(size, [80, 16], "the spectrogram: 80 frames across, 16 mel bins up");
  assert.match(await card.locator(".parameters").textContent(), /^rain on a tin roof\nSteps: 3, .*Audio length: 0\.02/);
  assert.equal(await card.locator(".download").getAttribute("download"), "diffuse.wav");
  await shot("audio");
  await page.selectOption("#model", "sd1");
  assert.equal(await page.isVisible("#width"), true, "back to an image model");
});
