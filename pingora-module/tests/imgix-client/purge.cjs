// imgix's own Management API client (imgix-management-js 1.3.1, github.com/imgix/imgix-management-js)
// purging one URL through ixproxy's purge API: `node purge.cjs ADMIN_ADDR API_KEY URL`.
//
// The client builds the request itself (`ImgixAPI.prototype.request`: `Content-Type:
// application/vnd.api+json`, `Authorization: Bearer <apiKey>`, `User-Agent:
// imgix-management-js/1.3.1`, the body object JSON-encoded) and reads the answer itself (2xx:
// `response.json()`; otherwise an `APIError` holding the parsed error document and the status).
// Its base URL is fixed (`https://api.imgix.com/api`), so the one change here is where its fetch
// goes: `fetch-wrapper`'s `fetch`, the seam the library's own tests stub, sends the same request
// to `http://ADMIN_ADDR` instead. Prints one JSON line: `{"status": 200, "body": …}` or
// `{"status": N, "error": …}`.
'use strict';

const fetchWrapper = require('imgix-management-js/src/fetch-wrapper');
const ImgixAPI = require('imgix-management-js');

const [admin, apiKey, url] = process.argv.slice(2);
const nodeFetch = fetchWrapper.fetch;
fetchWrapper.fetch = (target, options) =>
  nodeFetch(target.replace('https://api.imgix.com', `http://${admin}`), options);

const imgix = new ImgixAPI({ apiKey });
imgix
  .request('purge', {
    method: 'POST',
    body: { data: { attributes: { url }, type: 'purges' } },
  })
  .then((body) => console.log(JSON.stringify({ status: 200, body })))
  .catch((e) => {
    console.log(JSON.stringify({ status: e.status, error: e.response }));
  });
