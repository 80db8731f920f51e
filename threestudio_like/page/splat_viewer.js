// A small 3D Gaussian splatting viewer for the run page (WebGL2, no dependencies).
// It reads a standard splat .ply (binary little-endian float properties x y z f_dc_* opacity
// scale_* rot_*) from window.ASSETS[canvas.dataset.asset] (base64), projects every Gaussian's
// covariance to the screen (EWA: Σ2D = J W Σ Wᵀ Jᵀ + 0.3 px², as 3DGS does), sorts the splats by
// depth each frame and blends them back to front. data-up="-y" shows a file written with −Y up
// (the 3DGS convention) upright. Drag turns the orbit, the wheel zooms; canvas.dataset.loaded is
// "true" once the first frame is drawn.
(function () {
  "use strict";
  const SH_C0 = 0.28209479177387814;

  function decode(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes.buffer;
  }

  function parsePly(buffer) {
    const head = new TextDecoder().decode(new Uint8Array(buffer, 0, Math.min(buffer.byteLength, 65536)));
    const end = head.indexOf("end_header\n");
    if (!head.startsWith("ply") || end < 0) throw new Error("not a PLY file");
    let count = 0;
    const props = [];
    for (const line of head.slice(0, end).split("\n")) {
      const words = line.trim().split(/\s+/);
      if (words[0] === "element" && words[1] === "vertex") count = parseInt(words[2], 10);
      if (words[0] === "property") {
        if (words[1] !== "float") throw new Error("only float splat properties are read");
        props.push(words[2]);
      }
    }
    const stride = props.length;
    const data = new Float32Array(buffer.slice(end + "end_header\n".length, end + "end_header\n".length + count * stride * 4));
    const at = Object.fromEntries(props.map((name, i) => [name, i]));
    return { count, stride, data, at };
  }

  // per splat: centre (3), colour + alpha (4), covariance (6: xx xy xz yy yz zz)
  function splatsFrom(ply, flip) {
    const { count, stride, data, at } = ply;
    const centre = new Float32Array(count * 3), colour = new Float32Array(count * 4), cov = new Float32Array(count * 6);
    const f = flip ? [-1, -1, 1] : [1, 1, 1];  // −Y up → +Y up: a 180° turn about z
    for (let i = 0; i < count; i++) {
      const row = i * stride;
      for (let k = 0; k < 3; k++) {
        centre[i * 3 + k] = f[k] * data[row + at["xyz"[k]]];
        colour[i * 4 + k] = Math.min(1, Math.max(0, 0.5 + SH_C0 * data[row + at["f_dc_" + k]]));
      }
      colour[i * 4 + 3] = 1 / (1 + Math.exp(-data[row + at.opacity]));
      let [w, x, y, z] = [0, 1, 2, 3].map((k) => data[row + at["rot_" + k]]);
      const n = Math.hypot(w, x, y, z) || 1;
      [w, x, y, z] = [w / n, x / n, y / n, z / n];
      const R = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)];
      const s = [0, 1, 2].map((k) => Math.exp(data[row + at["scale_" + k]]));
      const M = [0, 1, 2].map((r) => [0, 1, 2].map((c) => f[r] * R[r * 3 + c] * s[c]));  // F R S
      const pairs = [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]];
      pairs.forEach(([a, b], k) => { cov[i * 6 + k] = M[a][0] * M[b][0] + M[a][1] * M[b][1] + M[a][2] * M[b][2]; });
    }
    return { count, centre, colour, cov };
  }

  const VERTEX = `#version 300 es
    precision highp float;
    in vec2 corner; in vec3 centre; in vec4 colour; in vec3 covA; in vec3 covB;
    uniform mat4 view; uniform float focal; uniform vec2 half_size;
    out vec4 v_colour; out vec2 v_offset; out vec3 v_conic;
    void main() {
      vec4 t = view * vec4(centre, 1.0);
      float z = -t.z;
      if (z < 0.05) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
      mat3 S = mat3(covA.x, covA.y, covA.z, covA.y, covB.x, covB.y, covA.z, covB.y, covB.z);
      mat3 W = mat3(view);
      mat3 C = W * S * transpose(W);
      // rows of J: d(u, v)/d(x, y, t.z), u = f x / z, v = f y / z
      vec3 j0 = vec3(focal / z, 0.0, focal * t.x / (z * z));
      vec3 j1 = vec3(0.0, focal / z, focal * t.y / (z * z));
      float a = dot(j0, C * j0) + 0.3, b = dot(j0, C * j1), c = dot(j1, C * j1) + 0.3;
      float det = a * c - b * b;
      if (det <= 0.0) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
      float mid = 0.5 * (a + c), radius = 3.0 * sqrt(mid + sqrt(max(0.1, mid * mid - det)));
      v_conic = vec3(c, -b, a) / det;
      v_offset = corner * radius;
      v_colour = colour;
      vec2 pixel = focal * t.xy / z + v_offset;
      gl_Position = vec4(pixel / half_size, 0.0, 1.0);
    }`;
  const FRAGMENT = `#version 300 es
    precision highp float;
    in vec4 v_colour; in vec2 v_offset; in vec3 v_conic;
    out vec4 frag;
    void main() {
      float power = -0.5 * (v_conic.x * v_offset.x * v_offset.x + 2.0 * v_conic.y * v_offset.x * v_offset.y
                            + v_conic.z * v_offset.y * v_offset.y);
      float alpha = min(0.99, v_colour.a * exp(power));
      if (power > 0.0 || alpha < 1.0 / 255.0) discard;
      frag = vec4(v_colour.rgb * alpha, alpha);
    }`;

  function program(gl) {
    const make = (type, source) => {
      const shader = gl.createShader(type);
      gl.shaderSource(shader, source);
      gl.compileShader(shader);
      if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
      return shader;
    };
    const p = gl.createProgram();
    gl.attachShader(p, make(gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(p, make(gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
    return p;
  }

  function lookAt(eye, target) {
    const sub = (u, v) => u.map((x, i) => x - v[i]);
    const norm = (u) => { const n = Math.hypot(...u) || 1; return u.map((x) => x / n); };
    const cross = (u, v) => [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
    const back = norm(sub(eye, target)), right = norm(cross([0, 1, 0], back)), up = cross(back, right);
    const dot = (u, v) => u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
    // column-major 4×4 world → camera
    return new Float32Array([right[0], up[0], back[0], 0, right[1], up[1], back[1], 0, right[2], up[2], back[2], 0,
                             -dot(right, eye), -dot(up, eye), -dot(back, eye), 1]);
  }

  function start(canvas) {
    const gl = canvas.getContext("webgl2", { premultipliedAlpha: true, antialias: false });
    if (!gl) { canvas.insertAdjacentHTML("afterend", "<p class=note>This browser has no WebGL2: the splats cannot be shown.</p>"); return; }
    const splats = splatsFrom(parsePly(decode(window.ASSETS[canvas.dataset.asset])), canvas.dataset.up === "-y");
    const p = program(gl);
    gl.useProgram(p);
    const vao = gl.createVertexArray();
    gl.bindVertexArray(vao);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const cornerAt = gl.getAttribLocation(p, "corner");
    gl.enableVertexAttribArray(cornerAt);
    gl.vertexAttribPointer(cornerAt, 2, gl.FLOAT, false, 0, 0);
    const instances = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, instances);
    let offset = 0;
    for (const [name, size] of [["centre", 3], ["colour", 4], ["covA", 3], ["covB", 3]]) {
      const at = gl.getAttribLocation(p, name);
      gl.enableVertexAttribArray(at);
      gl.vertexAttribPointer(at, size, gl.FLOAT, false, 13 * 4, offset * 4);
      gl.vertexAttribDivisor(at, 1);
      offset += size;
    }
    const packed = new Float32Array(splats.count * 13);
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < splats.count; i++) for (let k = 0; k < 3; k++) {
      lo[k] = Math.min(lo[k], splats.centre[i * 3 + k]); hi[k] = Math.max(hi[k], splats.centre[i * 3 + k]);
    }
    const target = lo.map((v, k) => 0.5 * (v + hi[k]));
    const orbit = { azimuth: 0.6, elevation: 0.35, distance: 2.4 * Math.max(...hi.map((v, k) => v - lo[k]), 1e-3), spinning: true };
    const order = new Uint32Array(splats.count), depth = new Float32Array(splats.count);

    function draw() {
      const { azimuth, elevation, distance } = orbit;
      const eye = [target[0] + distance * Math.cos(elevation) * Math.sin(azimuth), target[1] + distance * Math.sin(elevation),
                   target[2] + distance * Math.cos(elevation) * Math.cos(azimuth)];
      const view = lookAt(eye, target);
      for (let i = 0; i < splats.count; i++) {
        depth[i] = view[2] * splats.centre[i * 3] + view[6] * splats.centre[i * 3 + 1] + view[10] * splats.centre[i * 3 + 2] + view[14];
        order[i] = i;
      }
      order.sort((a, b) => depth[a] - depth[b]);  // most negative camera z (farthest) first
      for (let j = 0; j < splats.count; j++) {
        const i = order[j], o = j * 13;
        packed.set(splats.centre.subarray(i * 3, i * 3 + 3), o);
        packed.set(splats.colour.subarray(i * 4, i * 4 + 4), o + 3);
        packed.set(splats.cov.subarray(i * 6, i * 6 + 6), o + 7);
      }
      gl.bindBuffer(gl.ARRAY_BUFFER, instances);
      gl.bufferData(gl.ARRAY_BUFFER, packed, gl.DYNAMIC_DRAW);
      gl.viewport(0, 0, canvas.width, canvas.height);
      gl.clearColor(0.957, 0.957, 0.957, 1);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.enable(gl.BLEND);
      gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
      gl.uniformMatrix4fv(gl.getUniformLocation(p, "view"), false, view);
      gl.uniform1f(gl.getUniformLocation(p, "focal"), 0.5 * canvas.height / Math.tan(0.5 * 40 * Math.PI / 180));
      gl.uniform2f(gl.getUniformLocation(p, "half_size"), 0.5 * canvas.width, 0.5 * canvas.height);
      gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, splats.count);
    }

    let dragging = null;
    canvas.addEventListener("pointerdown", (e) => { dragging = [e.clientX, e.clientY]; orbit.spinning = false; });
    window.addEventListener("pointerup", () => { dragging = null; });
    window.addEventListener("pointermove", (e) => {
      if (!dragging) return;
      orbit.azimuth -= 0.01 * (e.clientX - dragging[0]);
      orbit.elevation = Math.max(-1.5, Math.min(1.5, orbit.elevation + 0.01 * (e.clientY - dragging[1])));
      dragging = [e.clientX, e.clientY];
    });
    canvas.addEventListener("wheel", (e) => { e.preventDefault(); orbit.distance *= Math.exp(0.001 * e.deltaY); orbit.spinning = false; });
    function frame() {
      if (orbit.spinning) orbit.azimuth += 0.004;
      draw();
      if (canvas.dataset.loaded !== "true") { canvas.dataset.loaded = "true"; canvas.dataset.count = String(splats.count); }
      requestAnimationFrame(frame);
    }
    frame();
  }

  window.addEventListener("DOMContentLoaded", () => {
    for (const canvas of document.querySelectorAll("canvas[data-asset]")) {
      try { start(canvas); } catch (error) { console.error("splat viewer:", error.message); canvas.dataset.loaded = "error"; }
    }
  });
})();
