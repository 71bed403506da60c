// The renderd-py demo map: every layer of /layers.json on a Leaflet map,
// with a layer switcher, and for a raster layer with keys a picker of its
// key values (from /datasets/{layer}.json). The view is kept in the URL:
// #layer/zoom/lat/lon, the layer being a tile set (sst/2012-08) where it has keys.
// High-density screens get the layers' HiDPI tiles (@2x) where they have them.
(function () {
  "use strict";

  var mapEl = document.getElementById("map");
  var layerName = document.getElementById("layer-name");
  var layerInfo = document.getElementById("layer-info");
  var tileInfo = document.getElementById("tile-info");
  var picker = document.getElementById("key-picker");
  var message = document.getElementById("message");
  var stats = { loaded: 0, errors: 0 };

  function showMessage(text) {
    message.textContent = text;
    message.hidden = false;
  }

  function getJSON(url) {
    return fetch(url, { cache: "no-cache" }).then(function (r) {
      if (!r.ok) {
        throw new Error(url + ": HTTP " + r.status);
      }
      return r.json();
    });
  }

  function parseHash() {
    var parts = window.location.hash.replace(/^#/, "").split("/");
    if (parts.length !== 4) {
      return null;
    }
    var z = parseInt(parts[1], 10), lat = parseFloat(parts[2]), lon = parseFloat(parts[3]);
    if (isNaN(z) || isNaN(lat) || isNaN(lon)) {
      return null;
    }
    return { layer: decodeURIComponent(parts[0]), zoom: z, center: [lat, lon] };
  }

  function clampBounds(b) {
    // TileJSON bounds are [w, s, e, n]; Web Mercator stops near 85.05 degrees.
    var s = Math.max(b[1], -85.0511), n = Math.min(b[3], 85.0511);
    return L.latLngBounds([s, b[0]], [n, b[2]]);
  }

  // the tile URL template for this screen: on a high-density screen
  // (devicePixelRatio 2 or more) the layer's @2x (or @3x) tiles where its
  // TileJSON offers them ("tiles@2x"), shown at the same CSS size
  function tileUrl(tj) {
    var ratio = window.devicePixelRatio || 1;
    for (var n = 4; n >= 2; n--) {
      if (ratio >= n && tj["tiles@" + n + "x"]) {
        document.body.setAttribute("data-scale", String(n));
        return tj["tiles@" + n + "x"][0];
      }
    }
    document.body.setAttribute("data-scale", "1");
    return tj.tiles[0];
  }

  function makeLayer(entry, tj) {
    var size = entry.tile_size || 256;
    var options = {
      minZoom: tj.minzoom,
      maxZoom: tj.maxzoom,
      attribution: tj.attribution || "",
      bounds: tj.bounds ? clampBounds(tj.bounds) : undefined,
      tileSize: size,
      zoomOffset: size === 512 ? -1 : 0,
      minNativeZoom: tj.minzoom,
      maxNativeZoom: tj.maxzoom,
      noWrap: true
    };
    var layer = L.tileLayer(tileUrl(tj), options);
    layer.on("tileload", function () {
      stats.loaded += 1;
      document.body.setAttribute("data-tiles-loaded", String(stats.loaded));
    });
    layer.on("tileerror", function () {
      stats.errors += 1;
      document.body.setAttribute("data-tile-errors", String(stats.errors));
    });
    layer.tilejson = tj;
    layer.choices = entry.choices || null;   // tile sets of a layer with keys
    layer.tileset = entry.choices ? entry.choices[0].tileset : entry.name;
    return layer;
  }

  // a layer with keys: its tile sets from the catalog, the first one's TileJSON
  function tilesetsOf(entry) {
    return getJSON("datasets/" + encodeURIComponent(entry.name) + ".json?limit=1000").then(function (doc) {
      var seen = {};
      entry.choices = [];
      (doc.datasets || []).forEach(function (d) {
        if (d.tileset && !seen[d.tileset]) {
          seen[d.tileset] = true;
          entry.choices.push({ tileset: d.tileset, tilejson: d.tilejson, keys: d.keys });
        }
      });
      if (entry.choices.length === 0) {
        throw new Error("layer " + entry.name + " has no datasets in the catalog");
      }
      return getJSON(entry.choices[0].tilejson);
    });
  }

  function start(entries, tilejsons) {
    var layers = {};
    var order = [];
    var maxZoom = 0, minZoom = 30;
    entries.forEach(function (entry, i) {
      var tj = tilejsons[i];
      layers[entry.name] = makeLayer(entry, tj);
      order.push(entry.name);
      maxZoom = Math.max(maxZoom, tj.maxzoom);
      minZoom = Math.min(minZoom, tj.minzoom);
    });

    var map = L.map(mapEl, {
      minZoom: minZoom,
      maxZoom: maxZoom,
      worldCopyJump: false,
      maxBounds: L.latLngBounds([-89, -220], [89, 220])
    });
    L.control.scale().addTo(map);
    if (order.length > 1) {
      L.control.layers(layers, null, { collapsed: false }).addTo(map);
    }

    function choose(layer, tileset) {
      // another tile set of a layer with keys: its TileJSON, then its tiles
      var choice = (layer.choices || []).filter(function (c) { return c.tileset === tileset; })[0];
      if (!choice || layer.tileset === tileset) {
        return Promise.resolve();
      }
      return getJSON(choice.tilejson).then(function (tj) {
        layer.tileset = tileset;
        layer.tilejson = tj;
        layer.setUrl(tileUrl(tj));
        describe();
        keepHash();
      }).catch(function (err) { showMessage("Cannot show " + tileset + ": " + err.message); });
    }

    function showPicker() {
      var layer = layers[current];
      picker.hidden = !layer.choices;
      picker.textContent = "";
      (layer.choices || []).forEach(function (c) {
        var opt = document.createElement("option");
        opt.value = c.tileset;
        opt.textContent = c.tileset.slice(current.length + 1);
        opt.selected = c.tileset === layer.tileset;
        picker.appendChild(opt);
      });
    }
    picker.addEventListener("change", function () { choose(layers[current], picker.value); });

    var view = parseHash();
    var wanted = view ? view.layer.split("/")[0] : null;
    var current = wanted && layers[wanted] ? wanted : order[0];
    layers[current].addTo(map);
    if (view && view.layer !== current) {
      choose(layers[current], view.layer);
    }
    if (view) {
      map.setView(view.center, view.zoom);
    } else {
      // TileJSON's center is [lon, lat, zoom]; without one, fit the bounds
      var tj = layers[current].tilejson;
      if (tj.center) {
        map.setView([tj.center[1], tj.center[0]], tj.center[2]);
      } else {
        map.fitBounds(clampBounds(tj.bounds || [-180, -85.0511, 180, 85.0511]));
      }
      if (map.getZoom() < tj.minzoom) {
        map.setZoom(tj.minzoom);
      }
    }

    function describe() {
      var tj = layers[current].tilejson;
      layerName.textContent = "· " + layers[current].tileset;
      document.body.setAttribute("data-tileset", layers[current].tileset);
      layerInfo.textContent = (tj.description ? tj.description + " · " : "") +
        "zoom " + tj.minzoom + "–" + tj.maxzoom;
    }

    function keepHash() {
      var c = map.getCenter();
      var hash = "#" + encodeURIComponent(layers[current].tileset) + "/" + map.getZoom() + "/" +
        c.lat.toFixed(4) + "/" + c.lng.toFixed(4);
      if (window.location.hash !== hash) {
        window.history.replaceState(null, "", hash);
      }
    }

    map.on("baselayerchange", function (e) {
      order.forEach(function (name) {
        if (layers[name] === e.layer) {
          current = name;
        }
      });
      describe();
      showPicker();
      keepHash();
    });
    map.on("moveend", keepHash);
    map.on("mousemove", function (e) {
      var opts = layers[current].options;
      var z = map.getZoom();
      var p = map.project(e.latlng, z).divideBy(opts.tileSize).floor();
      tileInfo.textContent = "tile " + (z + opts.zoomOffset) + "/" + p.x + "/" + p.y + " · " +
        e.latlng.lat.toFixed(4) + ", " + e.latlng.lng.toFixed(4);
    });
    describe();
    showPicker();
    window.renderdMap = { map: map, layers: layers, stats: stats, choose: choose };
  }

  getJSON("layers.json")
    .then(function (index) {
      var entries = index.layers || [];
      if (entries.length === 0) {
        throw new Error("the configuration has no [[layer]]");
      }
      return Promise.all(entries.map(function (e) {
        return e.keys && e.keys.length ? tilesetsOf(e) : getJSON(e.tilejson);
      }))
        .then(function (tilejsons) { start(entries, tilejsons); });
    })
    .catch(function (err) {
      showMessage("Cannot show the map: " + err.message);
      document.body.setAttribute("data-error", err.message);
    });
})();
