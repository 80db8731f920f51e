"""HTML of the pages (string.Template: ``$name`` is filled in, ``$$`` is a dollar sign)."""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 12px 20px; color: #222; }
h1 { font-size: 20px; margin: 8px 0 2px; } h2 { font-size: 16px; margin: 22px 0 6px; border-bottom: 1px solid #ddd; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
model-viewer, #splat-viewer { width: 512px; height: 512px; background: #f4f4f4; border: 1px solid #ddd; }
figure { margin: 0; } video, #validation { max-width: 100%; max-height: 560px; border: 1px solid #ddd; }
#curves { max-width: 100%; }
table.kv { border-collapse: collapse; } table.kv th, table.kv td { text-align: left; padding: 2px 10px 2px 0; vertical-align: top; }
table.kv th { font-weight: 600; color: #555; } table.config td, table.config th { font: 12px monospace; }
table.runs { border-collapse: collapse; } table.runs td, table.runs th { padding: 4px 8px; border-bottom: 1px solid #eee; text-align: left; }
table.runs img { height: 96px; } .note { color: #777; } details summary { cursor: pointer; }
"""

PAGE_SCRIPT = """
function assetUrl(key, type) {
  const text = atob(window.ASSETS[key]);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return URL.createObjectURL(new Blob([bytes], {type: type}));
}
const viewer = document.getElementById("asset-viewer");
if (viewer && window.ASSETS && window.ASSETS["model.glb"]) {
  viewer.addEventListener("load", () => { document.body.dataset.modelLoaded = "true"; });
  viewer.addEventListener("error", (event) => {
    document.body.dataset.modelLoaded = "error";
    console.error("the 3D viewer could not load model.glb", event.detail && event.detail.type);
  });
  viewer.src = assetUrl("model.glb", "model/gltf-binary");
}
"""

RUN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title><style>""" + STYLE + """</style>$head</head>
<body>
<h1>$title</h1><p class=note>run $run</p>
$headline
<h2>Asset</h2><div class="row"><div>$viewer</div><div>$splats</div></div>
<h2>Turntable and validation</h2><div class="row">$media</div>
<h2>Curves</h2>$curves
<div class="row"><div><h2>Quality</h2>$quality</div><div><h2>Export</h2>$export</div></div>
<h2>Config</h2><details><summary>configs/parsed.yaml, every key</summary>$config</details>
<script>""" + PAGE_SCRIPT + """</script>
</body></html>
"""

INDEX_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>runs</title><style>""" + STYLE + """</style></head>
<body><h1>$count runs</h1>
<table class="runs"><tr>$header</tr>$rows</table>
</body></html>
"""
