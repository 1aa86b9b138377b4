// The offline map: Natural Earth land (served by this site) and the page's markers.
// No tiles and no other site: it works wherever this system runs.
(function () {
  "use strict";
  var element = document.getElementById("map");
  if (!element || !window.L) { return; }
  var markers = JSON.parse(element.getAttribute("data-markers") || "[]");
  var map = L.map(element, { worldCopyJump: true, attributionControl: true, minZoom: 1, maxZoom: 12 });
  map.attributionControl.setPrefix(false);
  map.attributionControl.addAttribution("Natural Earth");
  var bounds = [];
  var layer = L.layerGroup().addTo(map);
  markers.forEach(function (m) {
    // names are text a facility's owner wrote: given to Leaflet as DOM nodes, never as
    // strings (a string is set as innerHTML)
    var link = document.createElement("a");
    link.href = "/facilities/" + encodeURIComponent(m[0]);
    link.textContent = m[1];
    var tip = document.createElement("span");
    tip.textContent = m[1];
    L.circleMarker([m[2], m[3]], { radius: 6, weight: 1, color: "#6a1b00", fillColor: "#d9480f", fillOpacity: 0.85 })
      .bindPopup(link).bindTooltip(tip).addTo(layer);
    bounds.push([m[2], m[3]]);
  });
  if (bounds.length === 1) { map.setView(bounds[0], 8); }
  else if (bounds.length > 1) { map.fitBounds(bounds, { padding: [24, 24], maxZoom: 10 }); }
  else { map.setView([20, 0], 1); }
  element.setAttribute("data-marker-count", String(markers.length));
  fetch("/static/vendor/world-atlas/land-50m.json").then(function (r) { return r.json(); }).then(function (topo) {
    var land = topojson.feature(topo, topo.objects.land);
    L.geoJSON(land, { interactive: false, style: { color: "#8a8a7a", weight: 0.6, fillColor: "#ecebe3", fillOpacity: 1 } })
      .addTo(map).bringToBack();
    element.setAttribute("data-basemap", "loaded");
  });
})();
