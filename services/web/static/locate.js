// "Use my location": fills a place field with the browser's position, when the person
// allows it. Without JavaScript the field is simply typed.
(function () {
  "use strict";
  if (!navigator.geolocation) { return; }
  document.querySelectorAll("button.locate").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-target"));
      navigator.geolocation.getCurrentPosition(function (p) {
        field.value = p.coords.latitude.toFixed(4) + ", " + p.coords.longitude.toFixed(4);
        field.focus();
      });
    });
  });
})();
